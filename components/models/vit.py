"""The Vision Transformer (Dosovitskiy et al. 2021), a part families build from with explicit
arguments: CLIP's image tower and the classification family's ``arch: vit``.

Paper facts it follows (Section 3.1):

- the image is cut into ``patch_size`` x ``patch_size`` patches, each embedded linearly (a conv
  with the patch as kernel and stride);
- a learned class token is prepended and learned position embeddings are added;
- pre-norm Transformer blocks: LayerNorm before multi-head attention and before a GELU MLP of
  four times the width, each with a residual connection;
- the class token's last state, layer-normed, is the image's representation, projected to ``out_dim``.
"""

from __future__ import annotations

import torch
from torch import nn


def encoder_blocks(width: int, heads: int, layers: int, dropout: float = 0.0) -> nn.TransformerEncoder:
    """``layers`` pre-norm Transformer blocks over (B, L, width): attention, then a GELU MLP of 4 x width."""
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class VisionTransformer(nn.Module):
    """Images (B, C, H, W) -> (B, out_dim): patches, a class token, pre-norm blocks, a projection."""

    def __init__(self, image_size: int, in_channels: int, patch_size: int, width: int, layers: int, heads: int,
                 out_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        n = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, width, patch_size, patch_size, bias=False)
        self.cls = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.pos = nn.Parameter(torch.randn(n + 1, width) * 0.02)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.blocks = encoder_blocks(width, heads, layers, dropout)
        self.proj = nn.Linear(width, out_dim, bias=bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, width): the class token's last state, layer-normed."""
        h = self.patch(x).flatten(2).transpose(1, 2)  # (B, patches, width)
        h = torch.cat([self.cls.expand(len(h), 1, -1), h], 1) + self.pos
        return self.ln_post(self.blocks(self.ln_pre(h))[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))
