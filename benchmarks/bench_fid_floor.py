"""Benchmark: how precisely the held-out images can pin down a sample-quality floor.

All figures are on the generative evaluator's standardised features of a shard set (digits by
default) and need no model:

- today's floor: ``n`` train images scored as samples against the test split (``n`` = its
  size), mean and spread over random draws (what the evaluate stage reports now);
- the held-out floor against the train statistics (real test, and real val + test, scored as
  samples against the whole train split), with a 95% interval two ways: the bootstrap
  (resampling with replacement, which duplicates images and so biases FID and KID upward)
  and half-subsampling without replacement (the spread of the score over random halves);
- a memoriser: ``--generated`` images resampled from train, against the train statistics
  (what scoring against train gives a model that copies its training data).

    python benchmarks/bench_fid_floor.py             # a few seconds

Needs the shards (`dvc repro preprocess-digits`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.evaluation import generative  # noqa: E402


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel over every pair (no subsets)."""
    d = a.shape[1]
    kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    n, m = len(a), len(b)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def interval(values: list[float]) -> str:
    low, high = np.percentile(values, [2.5, 97.5])
    return f"[{low:.3f}, {high:.3f}] (width {high - low:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=str(REPO / "data" / "shards" / "digits"))
    parser.add_argument("--draws", type=int, default=200, help="bootstrap / subsampling draws")
    parser.add_argument("--generated", type=int, default=10_000, help="the memoriser's sample count")
    args = parser.parse_args()

    ev = generative.evaluator(args.shards)
    train, val, test = (ev.ref[f"{s}_features"] for s in ("train", "val", "test"))
    rng = np.random.default_rng(0)
    print(f"features: {train.shape[1]}-d; train {len(train)}, val {len(val)}, test {len(test)} images\n")

    today = [generative.fid(train[rng.choice(len(train), len(test), replace=False)], test) for _ in range(20)]
    print(f"today's floor ({len(test)} train images vs test, 20 draws): FID {np.mean(today):.3f} "
          f"± {np.std(today):.3f} (2 std = {2 * np.std(today):.3f})\n")

    print("| held-out vs train | n | FID | bootstrap 95% | half-subsets 95% | KID | KID bootstrap 95% |")
    print("|---|---|---|---|---|---|---|")
    for name, real in (("test", test), ("val + test", np.concatenate([val, test]))):
        n = len(real)
        boot = [rng.integers(0, n, n) for _ in range(args.draws)]
        halves = [rng.choice(n, n // 2, replace=False) for _ in range(args.draws)]
        print(f"| {name} | {n} | {generative.fid(real, train):.3f} "
              f"| {interval([generative.fid(real[i], train) for i in boot])} "
              f"| {interval([generative.fid(real[i], train) for i in halves])} "
              f"| {kid(real, train):.4f} | {interval([kid(real[i], train) for i in boot[:50]])} |")

    copies = [generative.fid(train[rng.integers(0, len(train), args.generated)], train) for _ in range(20)]
    print(f"\na memoriser ({args.generated} train images resampled) vs train: FID {np.mean(copies):.4f} "
          f"± {np.std(copies):.4f}")


if __name__ == "__main__":
    main()
