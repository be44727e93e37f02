"""Decoding for sequence models (``components/models/transformer.py``, either arch): greedy and
beam search with the GNMT length penalty ((5 + |Y|) / 6)^alpha (Wu et al. 2016).

Both run incrementally: each layer caches its self-attention keys/values (and the encoder-decoder
the cross-attention keys/values of the encoder output), so step t costs O(t), not O(t^2). A
model decodes through two methods: ``start(src, repeat) -> DecodeState`` (each source ``repeat``
times: a beam per source) and ``step(state, token, t) -> logits (N, V)`` of the token after the
``t``-th target input (``t`` = 0: <bos>), which appends to ``state.caches``; and ``cfg.max_len``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from components.data.tokenizer import BOS, EOS, PAD


@dataclass
class DecodeState:
    """What a model decodes from: its layers' key/value caches (one dict per layer, each a dict of
    ``{"k", "v"}`` dicts), reordered with the beams, and whatever else the model keeps per row
    (``extra``: the same for every beam of a source, so never reordered)."""
    caches: list[dict]
    extra: dict[str, Any] = field(default_factory=dict)


class Decoder(Protocol):
    cfg: Any

    def start(self, src: torch.Tensor, repeat: int = 1) -> DecodeState: ...

    def step(self, state: DecodeState, token: torch.Tensor, t: int) -> torch.Tensor: ...

    def eval(self) -> Any: ...


def _reorder(caches: list[dict], index: torch.Tensor) -> None:
    for cache in caches:
        for part in cache.values():
            for k in ("k", "v"):
                if k in part:
                    part[k] = part[k].index_select(0, index)


@torch.no_grad()
def greedy(model: Decoder, src: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Token ids (B, <= max_len) by argmax at every step; rows end with <eos> then <pad>."""
    model.eval()
    max_len = max_len or model.cfg.max_len
    state = model.start(src)
    b = src.shape[0]
    token = torch.full((b, 1), BOS, dtype=torch.long, device=src.device)
    out, done = [], torch.zeros(b, dtype=torch.bool, device=src.device)
    for t in range(max_len):
        logits = model.step(state, token, t)
        logits[:, [PAD, BOS]] = -math.inf  # never produced by a live hypothesis
        token = logits.argmax(-1, keepdim=True)
        token[done] = PAD
        out.append(token)
        done |= token[:, 0] == EOS
        if done.all():
            break
    return torch.cat(out, 1)


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016); scores are log p(Y) / lp(Y)."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model: Decoder, src: torch.Tensor, beam_size: int, alpha: float = 0.6,
                max_len: int | None = None) -> torch.Tensor:
    """Token ids (B, <= max_len) of the best of ``beam_size`` hypotheses by length-penalised score.

    Each step expands every live hypothesis by every token and keeps the ``beam_size`` best by
    summed log-probability; a hypothesis that emitted <eos> stays in the beam unchanged
    (extended by <pad> at no cost). The winner is the beam with the best score / lp(length).
    With ``beam_size`` 1 this is exactly :func:`greedy`.
    """
    model.eval()
    max_len = max_len or model.cfg.max_len
    b, k, device = src.shape[0], beam_size, src.device
    state = model.start(src, repeat=k)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -math.inf  # all beams start identical: expand only the first
    lengths = torch.zeros(b, k, device=device)
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    last = torch.full((b * k, 1), BOS, dtype=torch.long, device=device)
    for t in range(max_len):
        logits = model.step(state, last, t).float()
        logits[:, [PAD, BOS]] = -math.inf  # never produced by a live hypothesis
        logp = logits.log_softmax(-1)
        v = logp.shape[-1]
        logp = logp.view(b, k, v)
        # A finished beam may only continue with <pad>, at log-probability 0.
        frozen = torch.full_like(logp, -math.inf)
        frozen[..., PAD] = 0.0
        logp = torch.where(done[..., None], frozen, logp)
        cand = (scores[..., None] + logp).view(b, k * v)
        scores, flat = cand.topk(k, dim=-1)
        beam, token = flat // v, flat % v
        tokens = torch.cat([tokens.gather(1, beam[..., None].expand(-1, -1, tokens.shape[-1])), token[..., None]], -1)
        was_done = done.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~was_done).float()
        done = was_done | (token == EOS)
        _reorder(state.caches, (beam + torch.arange(b, device=device)[:, None] * k).view(-1))
        last = token.view(-1, 1)
        if done.all():
            break
    best = (scores / length_penalty(lengths, alpha)).argmax(-1)
    return tokens[torch.arange(b, device=device), best]
