"""Dropout and attention for the CPU, where torch's own dropout spends its time drawing random numbers.

On the CPU, ``F.dropout`` draws one MT19937 number per element (``bernoulli_``), serially: in the
embedded Transformer's training step that is a quarter of the time (py-spy, 2-core EPYC). Here
one 64-bit word gives four 16-bit uniforms, each element is kept where its uniform clears
``round(p * 65536)`` of 65536 values, and the kept ones are scaled by 65536 / (65536 - that):
the same unbiased inverted dropout with p rounded to 1/65536, 2.4x faster forward and backward
(``python benchmarks/bench_dropout.py``). The draws come from torch's CPU generator, so
``torch.manual_seed`` makes them repeatable, and a resumed run's restored generator continues them.

Elsewhere (CUDA: fused Philox dropout, and dropout inside the flash/efficient attention kernels)
torch's own is faster, and these defer to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with probability ``p`` (as ``F.dropout``; p rounded to 1/65536 on the CPU)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
    dropped = round(p * LEVELS)
    keep = words.view(torch.int16)[:n].view(x.shape) >= dropped - LEVELS // 2
    return x * keep.to(x.dtype).mul_(LEVELS / (LEVELS - dropped))


class Dropout(nn.Module):
    """``nn.Dropout`` by :func:`dropout` (same ``p``, same state dict: none)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + masks) v over (B, H, L, d) tensors, with dropout on the weights.

    ``mask`` is boolean, True where attending is allowed. Without dropout, or off the CPU, this is
    ``F.scaled_dot_product_attention`` (fused kernels); with dropout on the CPU, torch's kernel
    falls back to the same matmuls, and the weights' dropout is :func:`dropout`'s."""
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if causal:  # as torch's is_causal: query i sees keys 0..i
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return dropout(scores.softmax(-1), dropout_p) @ v
