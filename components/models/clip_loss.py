"""CLIP's contrastive loss (Radford et al. 2021): a symmetric InfoNCE over the batch, and under DDP
over the global batch: every worker's embeddings are gathered (with gradients for its own rows),
so each worker's loss sees as many negatives as the whole batch holds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        size = torch.tensor([len(x)], device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        longest = max(sizes)  # ranks may hold a sample more or less: pad to gather, then cut
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank, ctx.longest = sizes, rank, longest
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        padded = grad.new_zeros((len(ctx.sizes), ctx.longest, *grad.shape[1:]))
        for r, (start, size) in enumerate(zip(np.cumsum([0, *ctx.sizes[:-1]]), ctx.sizes)):
            padded[r, :size] = grad[start:start + size]
        dist.all_reduce(padded)
        return padded[ctx.rank, :ctx.sizes[ctx.rank]]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every worker's rows (this one's with gradients); ``x`` itself outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over matched rows of normalised embeddings; returns (loss, logits image→text)."""
    logits = scale * image @ text.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2, logits
