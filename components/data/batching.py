"""Token-budget batches: sequences bucketed by length, an agreed number of batches per reader.

Batches of a fixed number of sentence pairs pad every pair to the longest in the batch; with
real sentence lengths (5 to 100+ tokens) most of such a batch is padding, and its memory swings
with its longest sentence. Vaswani et al. (2017, section 5.1) batch sentence pairs "by
approximate sequence length", about 25,000 source and 25,000 target tokens per batch.

Here a reader that must yield ``k`` batches from ``n`` samples holding ``T`` tokens (counts known
up front from ``stats.json``: every shard records its samples and tokens) gathers its shuffled
stream into *pools* of many batches' worth of samples, sorts each pool by length, and cuts it
into runs of near-equal tokens (:func:`grid_partition`), which it yields in a random
order. A pool gets a share of the ``k`` batches in proportion to its tokens (:func:`token_batches`),
so every batch holds about ``T / k`` tokens and the reader yields exactly ``k`` batches, every
sample in one of them. Exactly ``k`` is what DDP needs: the step count of every rank is agreed
before the first batch (the learning-rate schedule needs the run's total steps up front, too),
so no collective per epoch and no dropped or repeated sample.

Memory is bounded by the pool (samples of a few dozen batches), not by the dataset.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from components.data.shards import Batcher, apportion

POOL_BATCHES = 256  # batches' worth of samples sorted together: more -> less padding, less randomness


def partition(tokens: Sequence[float], parts: int) -> list[range]:
    """Cut a run of samples (their tokens, in order) into exactly ``parts`` contiguous non-empty
    runs of near-equal tokens. ``1 <= parts <= len(tokens)``."""
    m = len(tokens)
    if not 1 <= parts <= m:
        raise ValueError(f"cannot cut {m} samples into {parts} batches")
    cumulative = np.cumsum(tokens)
    i = np.arange(1, parts)
    cuts = np.searchsorted(cumulative, cumulative[-1] * i / parts, side="right")
    # Every run non-empty: cut i in [i, m - parts + i] and strictly increasing.
    cuts = np.maximum.accumulate(np.clip(cuts, i, m - parts + i) - i) + i
    bounds = [0, *cuts.tolist(), m]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def grid_partition(lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """Cut samples into exactly ``parts`` batches of near-equal padded size, by their lengths
    ``(m, fields)`` (a sentence pair's source and target): the indices of each batch.

    Batches hold near-equal tokens (:func:`partition`). One field: sorted, then cut. Several: a sample is padded in every field, so a
    batch must be narrow in all of them; sorting by one leaves the others spread (a source
    length admits many target lengths). The samples are sorted by the first field and cut into
    about ``sqrt(parts)`` strips of equal tokens, each strip sorted by the other fields and
    cut: a grid over the lengths that adapts to where the samples are. On
    the synthetic corpus of benchmarks/bench_text.py this halves the padding of a single sort.
    """
    m, fields = lengths.shape
    if not 1 <= parts <= m:
        raise ValueError(f"cannot cut {m} samples into {parts} batches")
    order = np.argsort(lengths[:, 0], kind="stable")
    strips = [order]
    if fields > 1 and parts > 1:
        cumulative = np.cumsum(lengths.sum(1)[order])
        count = min(parts, max(1, round(math.sqrt(parts))))
        cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, count) / count)
        strips = [strip for strip in np.split(order, cuts) if len(strip)]
    shares = apportion(parts, [float(lengths[strip].sum()) for strip in strips], [len(strip) for strip in strips])
    out = []
    for strip, share in zip(strips, shares):
        inner = strip[np.argsort(lengths[strip, 1:].sum(1), kind="stable")] if fields > 1 else strip
        out += [inner[run.start:run.stop] for run in partition(lengths[inner].sum(1), share)]
    return out


def token_batches(samples: Iterator[Any], *, batches: int, count: int, tokens: float,
                  length: Callable[[Any], Sequence[int]], pool: int, rng: random.Random) -> Iterator[list]:
    """Exactly ``batches`` lists of samples from a stream of ``count`` samples holding about
    ``tokens`` tokens (``length``: each sample's lengths per field), bucketed by length within
    pools of ``pool`` samples (:func:`grid_partition`).

    Each pool gets batches in proportion to its tokens, within what keeps the rest feasible
    (every later pool at least one batch, no batch empty). ``1 <= batches <= count``.
    """
    if not 1 <= batches <= count:
        raise ValueError(f"cannot make {batches} batches of {count} samples")
    pool = max(pool, math.ceil(count / batches))  # no more pools than batches
    left_batches, left_count, left_tokens = batches, count, float(tokens)
    while left_count > 0:
        chunk = list(itertools.islice(samples, min(pool, left_count)))
        if not chunk:
            return  # fewer samples than announced: the caller's check names the shard
        lengths = np.array([length(s) for s in chunk], dtype=np.int64).reshape(len(chunk), -1)
        size = float(lengths.sum())
        later = left_count - len(chunk)
        if later == 0:
            parts = left_batches
        else:
            later_pools = math.ceil(later / pool)
            parts = round(left_batches * size / max(left_tokens, 1.0))
            parts = min(max(parts, 1, left_batches - later), len(chunk), left_batches - later_pools)
        runs = grid_partition(lengths, parts)
        rng.shuffle(runs)
        for run in runs:
            yield [chunk[i] for i in run.tolist()]
        left_batches, left_count, left_tokens = left_batches - parts, later, left_tokens - size


def sequence_lengths(sample: tuple) -> list[int]:
    """A sample's tokens per sequence: the lengths of its 1-D tensor fields (a pair's source and target)."""
    return [len(v) for v in sample if isinstance(v, torch.Tensor) and v.dim() == 1]


def padding(batch: tuple) -> tuple[int, int]:
    """``(tokens, cells)`` of a batch's padded sequences (2-D integer tensors, padding id 0):
    ``1 - tokens / cells`` is the fraction of the batch that is padding."""
    tokens = cells = 0
    for v in batch:
        if isinstance(v, torch.Tensor) and v.dim() == 2 and not v.is_floating_point():
            tokens, cells = tokens + int(torch.count_nonzero(v)), cells + v.numel()
    return tokens, cells


class TextBatcher(Batcher):
    """Token sequences: collated with padding (by ``batch_size``) or bucketed by length into
    token-budget batches (:meth:`token_groups`, with ``batch_tokens``); each batch's real tokens
    and padded cells are tallied on the host, and an epoch reports its share of padding."""

    def token_groups(self, samples: Iterator[tuple], *, batches: int, count: int, tokens: float, min_pool: int,
                     rng: random.Random) -> Iterator[list[tuple]]:
        pool = max(min_pool, POOL_BATCHES * math.ceil(count / batches))
        return token_batches(samples, batches=batches, count=count, tokens=tokens, length=sequence_lengths,
                             pool=pool, rng=rng)

    def tally(self, batch: tuple) -> tuple[float, ...]:
        return padding(batch)

    def summarize(self, sums: Sequence[float]) -> dict[str, float]:
        """The share of the epoch's token cells that were padding (``batch_tokens`` keeps it low)."""
        tokens, cells = sums
        return {"padding": 1 - tokens / max(cells, 1)}
