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
from fractions import Fraction
from typing import Any

import numpy as np

POOL_BATCHES = 256  # batches' worth of samples sorted together: more -> less padding, less randomness


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """``total`` split into integers in proportion to ``weights`` (largest remainder, in exact
    arithmetic), each at most its cap and at least 1 where its cap allows and ``total`` suffices;
    ``sum(caps) >= total`` is the caller's."""
    if sum(caps) < total:
        raise ValueError(f"cannot deal {total} over caps {list(caps)}")
    weight = sum(Fraction(w) for w in weights) or Fraction(1)
    exact = [total * Fraction(w) / weight for w in weights]
    share = [min(cap, max(1 if cap else 0, math.floor(e))) for e, cap in zip(exact, caps)]
    # Too many (the floor of 1): take from the largest; too few: give where the remainder is largest.
    while sum(share) > total:
        share[max(range(len(share)), key=lambda i: share[i])] -= 1
    order = sorted(range(len(share)), key=lambda i: share[i] - exact[i])
    while sum(share) < total:
        for i in order:
            if sum(share) < total and share[i] < caps[i]:
                share[i] += 1
    return share


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
