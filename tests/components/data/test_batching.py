import itertools
import random

import numpy as np
import pytest

from components.data.batching import grid_partition, partition, token_batches
from components.data.shards import apportion


def pair_lengths(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) source and target lengths: log-normal sources, targets that follow them loosely."""
    rng = np.random.default_rng(seed)
    src = np.clip(rng.lognormal(np.log(20), 0.6, n), 1, 150).astype(int)
    tgt = np.clip(src * rng.normal(1.0, 0.15, n), 1, 160).astype(int)
    return np.stack([src, tgt], 1)


def padding(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    cells = sum(len(b) * lengths[b].max(0).sum() for b in batches)
    return 1 - lengths.sum() / cells


def test_apportion_is_proportional_within_caps():
    assert apportion(10, [1, 2, 3, 4], [10] * 4) == [1, 2, 3, 4]
    assert apportion(5, [1, 1], [1, 9]) == [1, 4]  # a cap holds
    assert apportion(3, [0, 5, 5], [1, 1, 1]) == [1, 1, 1]  # every part with room gets one
    assert sum(apportion(7, [0.3, 0.3, 0.4], [7, 7, 7])) == 7
    with pytest.raises(ValueError, match="cannot deal"):
        apportion(5, [1, 1], [2, 2])


def test_partition_cuts_exactly_into_runs_of_near_equal_tokens():
    tokens = np.sort(np.random.default_rng(0).integers(1, 100, 1000))
    runs = partition(tokens, 10)
    assert len(runs) == 10 and runs[0].start == 0 and runs[-1].stop == 1000
    assert all(a.stop == b.start and len(a) for a, b in itertools.pairwise(runs))
    sums = [tokens[r.start:r.stop].sum() for r in runs]
    assert max(sums) - min(sums) <= tokens.max()  # equal up to one sample
    assert [len(r) for r in partition([1, 1, 1, 100], 3)] == [2, 1, 1]
    assert [len(r) for r in partition([5] * 4, 4)] == [1, 1, 1, 1]  # as many runs as samples
    with pytest.raises(ValueError, match="cannot cut 3 samples into 4"):
        partition([1, 2, 3], 4)


@pytest.mark.parametrize("parts", [1, 7, 64])
def test_grid_partition_covers_every_sample_once_in_exactly_the_parts(parts):
    lengths = pair_lengths(3000)
    batches = grid_partition(lengths, parts)
    assert len(batches) == parts and all(len(b) for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(3000))


def test_grid_partition_pads_less_than_sorting_by_one_length():
    """Sorting by the total length leaves source and target each spread within a batch; the grid
    keeps both narrow (the reason it exists)."""
    lengths = pair_lengths(20000)
    grid = padding(lengths, grid_partition(lengths, 256))
    order = np.argsort(lengths.sum(1), kind="stable")
    by_total = padding(lengths, [order[r.start:r.stop] for r in partition(lengths.sum(1)[order], 256)])
    assert grid < 0.08 and grid < 0.5 * by_total
    one_field = grid_partition(lengths[:, :1], 64)
    assert padding(lengths[:, :1], one_field) < 0.05


@pytest.mark.parametrize("count, batches, pool", [(1000, 1, 100), (1000, 37, 100), (1000, 1000, 64),
                                                  (5000, 40, 1000), (999, 3, 998)])
def test_token_batches_yield_exactly_the_batches_with_every_sample_once(count, batches, pool):
    lengths = pair_lengths(count, seed=count + batches)
    samples = [tuple(x) + (i,) for i, x in enumerate(lengths.tolist())]
    out = list(token_batches(iter(samples), batches=batches, count=count, tokens=float(lengths.sum()),
                             length=lambda s: s[:2], pool=pool, rng=random.Random(0)))
    assert len(out) == batches and all(out)
    assert sorted(s[2] for b in out for s in b) == list(range(count))
    again = list(token_batches(iter(samples), batches=batches, count=count, tokens=float(lengths.sum()),
                               length=lambda s: s[:2], pool=pool, rng=random.Random(0)))
    assert again == out  # the seed decides


def test_token_batches_hold_about_the_tokens_asked_for():
    lengths = pair_lengths(20000)
    samples = [tuple(x) for x in lengths.tolist()]
    batches = int(lengths.sum() // 4000)
    out = list(token_batches(iter(samples), batches=batches, count=20000, tokens=float(lengths.sum()),
                             length=lambda s: s, pool=4096, rng=random.Random(1)))
    tokens = np.array([sum(map(sum, b)) for b in out])
    assert len(out) == batches and 3000 < tokens.min() and tokens.max() < 5500
