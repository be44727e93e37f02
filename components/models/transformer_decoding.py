"""Decoding for the encoder-decoder Transformer (``components/models/transformer.py``): greedy and
beam search with the GNMT length penalty ((5 + |Y|) / 6)^alpha (Wu et al. 2016).

Both run incrementally: each decoder layer caches its self-attention keys/values and the
cross-attention keys/values of the encoder output, so step t costs O(t), not O(t^2). The model
gives ``encode(src) -> (memory, mask)``, ``decode(tokens, memory, mask, caches, offset)`` and
``decoder`` (its layers) and ``cfg.max_len``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from components.data.tokenizer import BOS, EOS, PAD

if TYPE_CHECKING:
    from components.models.transformer import Transformer


def _reorder(caches: list[dict], index: torch.Tensor) -> None:
    for cache in caches:
        for part in cache.values():
            for k in ("k", "v"):
                if k in part:
                    part[k] = part[k].index_select(0, index)


@torch.no_grad()
def greedy(model: Transformer, src: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Token ids (B, <= max_len) by argmax at every step; rows end with <eos> then <pad>."""
    model.eval()
    max_len = max_len or model.cfg.max_len
    memory, mask = model.encode(src)
    b = src.shape[0]
    caches: list[dict] = [{} for _ in model.decoder]
    token = torch.full((b, 1), BOS, dtype=torch.long, device=src.device)
    out, done = [], torch.zeros(b, dtype=torch.bool, device=src.device)
    for t in range(max_len):
        logits = model.decode(token, memory, mask, caches, offset=t)[:, -1]
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
def beam_search(model: Transformer, src: torch.Tensor, beam_size: int, alpha: float = 0.6,
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
    memory, mask = model.encode(src)
    memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    caches: list[dict] = [{} for _ in model.decoder]
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -math.inf  # all beams start identical: expand only the first
    lengths = torch.zeros(b, k, device=device)
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    last = torch.full((b * k, 1), BOS, dtype=torch.long, device=device)
    for t in range(max_len):
        logits = model.decode(last, memory, mask, caches, offset=t)[:, -1].float()
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
        _reorder(caches, (beam + torch.arange(b, device=device)[:, None] * k).view(-1))
        last = token.view(-1, 1)
        if done.all():
            break
    best = (scores / length_penalty(lengths, alpha)).argmax(-1)
    return tokens[torch.arange(b, device=device), best]
