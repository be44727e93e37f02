"""Benchmark: what successive halving finds against an exhaustive grid over the same space (ResNet).

The sweep is the tune stage's own (``params.yaml``'s ``tune.resnet``: params.yaml's own config
plus ``samples_per_schedule`` draws per schedule, synchronous successive halving up to
``tune.resnet.epochs``). The grid crosses every schedule of the space with ``--lrs``
log-spaced peak LRs over its range and every warm-up choice, each trained to the same
``tune.resnet.epochs``. Both run through ``tune_run.sweep`` (real Ray Tune, one trial per
core, each trial single-threaded: the figures do not depend on concurrency). Prints a table of
best val accuracy, its config and the epochs each spent.

    python benchmarks/bench_sweep.py            # about 8 minutes on 2 cores (grid: 40 runs of 12 epochs)

Needs the digits shards (`dvc repro preprocess-digits`). Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import replace  # noqa: E402
from components.params import train_config, tune_config  # noqa: E402
from components.training import launch, tune_run  # noqa: E402
from components.training import sweep as sha  # noqa: E402


def grid(space, lrs: int) -> list[sha.Trial]:
    lo, hi = math.log(space.lr[0]), math.log(space.lr[1])
    points = [float(f"{math.exp(lo + (hi - lo) * i / max(lrs - 1, 1)):.4g}") for i in range(lrs)]
    trials = []
    for schedule in space.schedule:
        for lr in points:
            for warmup in space.warmup:
                if schedule == "inverse_sqrt" and warmup == 0:
                    continue
                trials.append(sha.Trial(f"g{len(trials):02d}", schedule, lr, warmup))
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lrs", type=int, default=5, help="peak LRs of the grid, log-spaced over the space's range")
    parser.add_argument("--algo", default="resnet")
    parser.add_argument("--only", choices=["sweep", "grid"], help="run one side only (the grid is the slow one)")
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        help="tune.<algo> key=value to try instead of params.yaml's (e.g. -S samples_per_schedule=6)")
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in args.overrides:
        key, value = item.split("=", 1)
        raw["tune"][args.algo][key] = yaml.safe_load(value)
    cfg, tcfg = train_config(raw, args.algo), tune_config(raw, args.algo)
    shards = REPO / "data" / "shards" / raw["algorithms"][args.algo]["dataset"]
    if not (shards / "stats.json").exists():
        sys.exit(f"error: {shards} has no shards; run `dvc repro preprocess-{raw['algorithms'][args.algo]['dataset']}`")
    from components.models import get_family

    family = get_family(raw["algorithms"][args.algo].get("family") or args.algo)
    metric, mode = family.VAL_METRIC, family.VAL_MODE
    base = replace(cfg, f"train.{args.algo}", epochs=tcfg.epochs, checkpoint_every=tcfg.epochs, num_workers=0, tuned=False)
    launch.init_ray()
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    table = []
    for method in [args.only] if args.only else ["sweep", "grid"]:
        runs_root = str(work / method)

        t0 = time.perf_counter()
        options = dict(metric=metric, mode=mode, algo=args.algo, family=family.__name__.split(".")[-1], base=base,
                       data_dir=str(shards), runs_root=runs_root, storage_path=str(work / "ray"), name=method,
                       train_fraction=tcfg.train_fraction)
        if method == "sweep":
            trials = sha.draw(tcfg.space, base, tcfg.samples_per_schedule, tcfg.seed)
            result = tune_run.sweep(trials, grace_period=tcfg.grace_period, reduction_factor=tcfg.reduction_factor,
                                    epochs=tcfg.epochs, **options)
        else:
            trials = grid(tcfg.space, args.lrs)
            result = tune_run.sweep(trials, grace_period=tcfg.epochs, reduction_factor=2, epochs=tcfg.epochs,
                                    **options)
        best, spent = result.winner, result.epochs_spent
        wall = time.perf_counter() - t0
        value = best.at[tcfg.epochs][metric]
        table.append((method, len(trials), spent, value, best.trial, wall))
        print(f"{method}: best {metric} {value:.4f} ({best.trial.schedule}, lr {best.trial.lr:.4g}, warm-up "
              f"{best.trial.warmup}); {len(trials)} trials, {spent} epochs, {wall:.0f}s", flush=True)

    print(f"\n{args.algo}, {tcfg.epochs} epochs per full trial; space {tcfg.space.schedule}, lr {tcfg.space.lr}, "
          f"warm-up {tcfg.space.warmup}\n")
    print(f"| method | trials | epochs spent | best {metric} | config | wall s |")
    print("|---|---|---|---|---|---|")
    for method, n, spent, value, trial, wall in table:
        print(f"| {method} | {n} | {spent} | {value:.4f} | {trial.schedule}, lr {trial.lr:.4g}, warm-up {trial.warmup} "
              f"| {wall:.0f} |")
    if len(table) < 2:
        return
    (_, _, s_spent, s_value, _, _), (_, _, g_spent, g_value, _, _) = table
    sign = 1 if mode == "max" else -1
    print(f"\nsweep - grid: {sign * (s_value - g_value) * 100:+.2f} points of {metric} (floor: >= -0.5); "
          f"epochs {s_spent / g_spent:.1%} of the grid's (floor: <= 35%)")


if __name__ == "__main__":
    main()
