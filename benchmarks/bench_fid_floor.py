"""Benchmark: how precisely the held-out images pin down sample quality, and what tells a copier.

All figures are on the generative evaluator's standardised features of a shard set (digits by
default) and need no model. Real images stand in for samples (real val images: a perfect
generator; train images with a little noise in feature space: a copier), scored as the evaluate
stage scores a generator, against the test split:

- KID over every pair with its 95% interval by half-sampling (random halves of both sets, without
  replacement), and the interval's width, at the evaluate stage's n and at larger n;
- the paired difference the evaluate stage reports (KID of the samples minus KID of as many real
  training images, on the same halves of the held-out images), with its width;
- FID beside it: its half-sample values sit above the full one (FID is biased upward at small
  n, more at n/2), which is why the headline is KID;
- the bootstrap's KID (resampling with replacement) against the full one: the bias that rules
  it out (duplicated images look like a closer match);
- the memorisation test (``generative.memorisation``) of the stand-ins.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=str(REPO / "data" / "shards" / "digits"))
    parser.add_argument("--draws", type=int, default=200, help="half-samples per interval")
    args = parser.parse_args()

    ev = generative.evaluator(args.shards)
    train, val, test = (ev.ref[f"{s}_features"] for s in ("train", "val", "test"))
    rng = np.random.default_rng(0)
    n = len(test)
    print(f"features: {train.shape[1]}-d; train {len(train)}, val {len(val)}, test {len(test)} images; "
          f"{args.draws} half-samples per interval\n")

    print("| samples (vs test) | n | KID [95% interval] | width | KID minus real train [95%] | width |")
    print("|---|---|---|---|---|---|")
    stand_ins = {"real val images": val[:n],
                 "train images + noise (copier)": train[rng.choice(len(train), n, replace=False)]
                 + 0.1 * rng.standard_normal((n, train.shape[1])),
                 "real val images, shifted 0.3 sd": val[:n] + 0.3}
    reference = train[rng.choice(len(train), n, replace=False)]
    for name, fake in stand_ins.items():
        r = generative.kid_interval(fake, test, args.draws, 0, reference=reference)
        print(f"| {name} | {n} | {r['kid']:.4f} [{r['kid_low']:.4f}, {r['kid_high']:.4f}] "
              f"| {r['kid_high'] - r['kid_low']:.4f} | {r['kid_minus_reference']:+.4f} "
              f"[{r['kid_minus_reference_low']:+.4f}, {r['kid_minus_reference_high']:+.4f}] "
              f"| {r['kid_minus_reference_high'] - r['kid_minus_reference_low']:.4f} |")
    big = min(len(train) // 2, len(val) + len(test))
    pool = np.concatenate([val, test])
    r = generative.kid_interval(train[:big], pool[:big], args.draws, 0)
    print(f"| train vs val+test (more images) | {big} | {r['kid']:.4f} [{r['kid_low']:.4f}, {r['kid_high']:.4f}] "
          f"| {r['kid_high'] - r['kid_low']:.4f} | | |")

    halves = [(rng.choice(n, n // 2, replace=False), rng.choice(n, n // 2, replace=False)) for _ in range(50)]
    boots = [(rng.integers(0, n, n), rng.integers(0, n, n)) for _ in range(50)]
    fake = val[:n]
    print(f"\nreal val images vs test: FID {generative.fid(fake, test):.3f}, on halves "
          f"{np.mean([generative.fid(fake[i], test[j]) for i, j in halves]):.3f} (biased upward at n/2); "
          f"KID {generative.kid(fake, test):.4f}, on halves {np.mean([generative.kid(fake[i], test[j]) for i, j in halves]):.4f} "
          f"(unbiased), bootstrap {np.mean([generative.kid(fake[i], test[j]) for i, j in boots]):.4f} "
          f"(duplicates bias it)")

    print("\n| samples | memorisation z | near copies | NN distance ratio |")
    print("|---|---|---|---|")
    for name, fake in stand_ins.items():
        m = generative.memorisation(fake, test, train)
        print(f"| {name} | {m['memorisation_z']:+.2f} | {m['near_copies']:.3f} | {m['nn_distance_ratio']:.2f} |")


if __name__ == "__main__":
    main()
