"""Replay a finished sweep at fewer trials: which winner would a smaller ``samples_per_schedule`` pick?

A sweep's trials are drawn in a fixed order (``sweep.draw``: params.yaml's own config, then one
draw per schedule, again and again), so the sweep of ``samples_per_schedule: k`` is the first
``1 + k x schedules`` trials of a larger one, and a trial's metrics at an epoch do not depend on
which other trials ran (each trial is seeded by its own config). Successive halving only reads the
live trials' val metric at each rung's end, so a smaller sweep can be replayed exactly from the
larger one's recorded epochs (``<runs>/<trial>/epochs.jsonl``) wherever the trials it would keep
were kept by the larger one too; where it would need an epoch the larger sweep never trained,
the line says "unknown". Trains nothing, in a few seconds (most of them importing torch with the loop's
table reader).

    python benchmarks/replay_sweep.py                 # every algorithm of params.yaml
    python benchmarks/replay_sweep.py --algo resnet   # one

Reads ``models/<algo>/tune/sweep.json`` and the newest ``runs/<algo>/tune-*`` under the storage root
(``runtime.storage_root``: the run directories, as the tune stage left them; a local root only);
the rungs are params.yaml's ``tune.<algo>``.
A replayed winner equal to the sweep's own means a smaller sweep would train, evaluate and
register the same model, bit for bit, for fewer epochs; another winner must be trained to be judged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.training import sweep as sha
from components.training.loop import EPOCHS, read_rows
from pipelines.layout import Layout


class _Missing(Exception):
    pass


def replay(algo: str, runs: Path, params: dict, record: dict) -> list[str]:
    """One line per ``samples_per_schedule`` up to the sweep's own: the replayed winner, or "unknown"."""
    metric, mode, tcfg = record["metric"], record["mode"], params["tune"][algo]
    schedules = len(tcfg["space"]["schedule"])
    rows: dict[str, dict[int, dict]] = {}
    for o in record["outcomes"]:
        rows[o["trial"]] = {r["epoch"]: r for r in read_rows(str(runs / o["trial"] / EPOCHS)) if metric in r}
    trials = [sha.Trial(o["trial"], o["schedule"], o["lr"], o["warmup"]) for o in record["outcomes"]]

    def run_rung(live: list[sha.Trial], r: int) -> dict[str, dict]:
        missing = [t.name for t in live if r - 1 not in rows[t.name]]
        if missing:
            raise _Missing(f"needs {', '.join(missing)} at epoch {r}, which the sweep never trained")
        return {t.name: rows[t.name][r - 1] for t in live}

    out = []
    for k in range(1, (len(trials) - 1) // schedules + 1):
        subset = trials[:1 + k * schedules]
        try:
            res = sha.successive_halving(subset, run_rung, grace_period=tcfg["grace_period"],
                                         reduction_factor=tcfg["reduction_factor"], epochs=tcfg["epochs"],
                                         metric=metric, mode=mode)
        except _Missing as exc:
            out.append(f"{algo:12s} samples_per_schedule {k} ({len(subset):2d} trials): unknown: {exc}")
            continue
        w = res.winner
        same = "the same winner" if w.trial.name == record["winner"]["trial"] else "ANOTHER winner"
        out.append(f"{algo:12s} samples_per_schedule {k} ({len(subset):2d} trials): {w.trial.name} "
                   f"({w.trial.schedule}, lr {w.trial.lr:.4g}) {metric} {w.at[w.epochs][metric]:.4f}, "
                   f"{res.epochs_spent} epochs; {same}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", action="append", help="an algorithm of params.yaml (default: all)")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    layout = Layout(REPO)
    runs_root = Path(layout.storage_root(params.get("runtime", {}).get("storage_root", ""))) / "runs"
    for algo in args.algo or list(params["tune"]):
        found = sorted((runs_root / algo).glob("tune-*"), key=lambda p: p.stat().st_mtime)
        if not found or not layout.sweep(algo).exists():
            print(f"{algo:12s} no finished sweep here: run `dvc repro tune-{algo}` first")
            continue
        record = json.loads(layout.sweep(algo).read_text())
        print(f"{algo:12s} the sweep: {record['trials']} trials, winner {record['winner']['trial']}, "
              f"{record['epochs_spent']} epochs")
        for line in replay(algo, found[-1], params, record):
            print(line)


if __name__ == "__main__":
    main()
