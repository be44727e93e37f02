"""The denoising U-Net, a part families build from with explicit arguments: the diffusion family's
ε_θ(x_t, t, y) today, in pixel space or in an autoencoder's latent space alike (the input's
channels are an argument, the resolution is whatever is passed in, as long as it is even).

Paper facts it follows (Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021):

- the step t enters as a sinusoidal embedding (the Transformer's position encoding), through a
  two-layer MLP to ``4 x width`` channels, added inside every residual block;
- residual blocks: GroupNorm, SiLU, 3x3 conv, the embedding added per channel, GroupNorm, SiLU,
  dropout, 3x3 conv (initialised to zero, so each block starts as the identity);
- self-attention at the lowest resolution, between two residual blocks;
- skip connections from each block on the way down to its mirror on the way up.

Conditioning, both optional and added to the step embedding: a class label (``num_classes`` > 0,
with one more index, ``num_classes``, for "no class": what label dropout trains and classifier-free
guidance subtracts), and an external vector (``cond_dim`` > 0: e.g. a caption's text embedding),
projected linearly without a bias, so a zero vector (or none) is "no condition".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the step (as the Transformer's positions): (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], 1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, c: int, groups: int, heads: int = 4):
        super().__init__()
        if c % heads:
            raise ValueError(f"channels {c} must be divisible by heads {heads}")
        self.norm, self.qkv, self.out, self.heads = nn.GroupNorm(groups, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1), heads
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """(x (B, in_channels, S, S), t (B,), y (B,) | None, cond (B, cond_dim) | None) -> (B, in_channels, S, S).

    Two resolutions (S and S/2, so S must be even), ``blocks`` residual blocks each with
    ``width`` and ``2 x width`` channels, attention and a middle block at S/2, skip connections
    from the way down to the way up.
    """

    def __init__(self, in_channels: int, width: int = 64, blocks: int = 2, groups: int = 8, dropout: float = 0.0,
                 num_classes: int = 0, cond_dim: int = 0):
        super().__init__()
        if width % groups:
            raise ValueError(f"GroupNorm needs width ({width}) divisible by groups ({groups})")
        w, g, emb, drop = width, groups, 4 * width, dropout
        self.width, self.num_classes = width, num_classes
        self.time = nn.Sequential(nn.Linear(w, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.classes = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.inp = nn.Conv2d(in_channels, w, 3, padding=1)
        self.down1 = nn.ModuleList([ResBlock(w, w, emb, g, drop) for _ in range(blocks)])
        self.downsample = nn.Conv2d(w, w, 3, stride=2, padding=1)
        self.down2 = nn.ModuleList([ResBlock(w if i == 0 else 2 * w, 2 * w, emb, g, drop) for i in range(blocks)])
        self.mid1, self.mid_attn, self.mid2 = ResBlock(2 * w, 2 * w, emb, g, drop), SelfAttention(2 * w, g), \
            ResBlock(2 * w, 2 * w, emb, g, drop)
        self.up2 = nn.ModuleList([ResBlock(4 * w, 2 * w, emb, g, drop) for _ in range(blocks)])
        self.upsample = nn.Conv2d(2 * w, w, 3, padding=1)
        self.up1 = nn.ModuleList([ResBlock(2 * w, w, emb, g, drop) for _ in range(blocks)])
        self.out = nn.Sequential(nn.GroupNorm(g, w), nn.SiLU(), nn.Conv2d(w, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # created last, so a network without it draws the same initial weights as before it existed
        self.cond = nn.Linear(cond_dim, emb, bias=False) if cond_dim else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"the U-Net halves the resolution once, so it must be even, got {tuple(x.shape[-2:])}")
        emb = self.time(time_embedding(t, self.width))
        if self.classes is not None:
            y = torch.full_like(t, self.num_classes) if y is None else y
            emb = emb + self.classes(y)
        if self.cond is not None and cond is not None:
            emb = emb + self.cond(cond)
        h = self.inp(x)
        skips = []
        for block in self.down1:
            h = block(h, emb)
            skips.append(h)
        h = self.downsample(h)
        for block in self.down2:
            h = block(h, emb)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for block in self.up2:
            h = block(torch.cat([h, skips.pop()], 1), emb)
        h = self.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        for block in self.up1:
            h = block(torch.cat([h, skips.pop()], 1), emb)
        return self.out(h)
