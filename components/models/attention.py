"""Transformer blocks with explicit arguments, a part families build from: the encoder-decoder and
the decoder-only Transformer (``components/models/transformer.py``) today.

Paper facts they follow (Vaswani et al. 2017):

- attention is softmax(QK^T / sqrt(d_k)) V over ``heads`` heads of d_k = d_model / heads
  (Section 3.2), computed by torch's fused ``scaled_dot_product_attention`` (training on the
  CPU: ``components/models/dropout.py``, whose dropout draws a quarter of torch's random numbers);
- positions are encoded as PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)
  (Section 3.5);
- each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-norm, Section 5.4), or
  x + Dropout(Sublayer(LayerNorm(x))) (pre-norm), which trains without a warm-up more easily.

A :class:`Block` is self-attention (masked by ``mask``, causal where asked), cross-attention to a
``memory`` where built with ``cross=True``, and a feed-forward network. Given a ``cache`` dict,
it runs incrementally: self-attention appends this call's keys and values to the cache, and
cross-attention computes the memory's keys and values once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from components.models.dropout import Dropout, attention


def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """PE (length, d_model): sin on even channels, cos on odd, wavelengths 2pi..10000*2pi."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention``.

    ``mask`` is boolean, broadcastable to (B, heads, Lq, Lk), True where attending is allowed.
    ``cache`` (a dict) makes it incremental: self-attention appends this call's keys and values
    (a call over several positions is causal only through ``mask``); cross-attention
    (``static=True``) computes the memory's keys and values once.
    """

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} must be divisible by heads {heads}")
        self.heads, self.d_k, self.dropout = heads, d_model // heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, d_k)
        return x.unflatten(-1, (self.heads, self.d_k)).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, cache: dict | None = None, static: bool = False) -> torch.Tensor:
        q = self._split(self.q(x))
        if cache is not None and static and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = (self._split(t) for t in self.kv(memory).chunk(2, dim=-1))
            if cache is not None:
                if not static and "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        out = attention(q, k, v, mask, causal=causal and cache is None,  # a cached step attends to all of its past
                        dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), Dropout(dropout), nn.Linear(d_ff, d_model))


class Residual(nn.Module):
    """Post-norm LN(x + drop(f(x))) or pre-norm x + drop(f(LN(x)))."""

    def __init__(self, d_model: int, dropout: float, pre: bool):
        super().__init__()
        self.norm, self.drop, self.pre = nn.LayerNorm(d_model), Dropout(dropout), pre

    def forward(self, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre:
            return x + self.drop(f(self.norm(x)))
        return self.norm(x + self.drop(f(x)))


class Block(nn.Module):
    """Self-attention, cross-attention to a memory (``cross=True``), a feed-forward network; each
    wrapped in a :class:`Residual` (``pre``: pre-norm)."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.0, pre: bool = False,
                 cross: bool = False):
        super().__init__()
        self.self_attn = Attention(d_model, heads, dropout)
        self.cross_attn = Attention(d_model, heads, dropout) if cross else None
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.res = nn.ModuleList(Residual(d_model, dropout, pre) for _ in range(3 if cross else 2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """``mask``/``causal``: which positions of ``x`` each may attend to; ``memory_mask``: which
        memory positions (cross-attention). ``cache``: incremental, as :class:`Attention`'s."""
        self_cache = cross_cache = None
        if cache is not None:
            self_cache = cache.setdefault("self", {})
            cross_cache = cache.setdefault("cross", {}) if self.cross_attn is not None else None
        x = self.res[0](x, lambda h: self.self_attn(h, h, mask, causal=causal, cache=self_cache))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("a block built with cross=True needs the memory to attend to")
            x = self.res[1](x, lambda h: self.cross_attn(h, memory, memory_mask, cache=cross_cache, static=True))
        return self.res[-1](x, self.ff)
