"""The sweep replay tells the winner a smaller sweep picks, from the larger sweep's recorded epochs."""

import json
import math
import random
import sys
from pathlib import Path

from components.training import sweep as sha

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from replay_sweep import replay

SCHEDULES = ["constant", "step", "cosine", "onecycle"]
TUNE = {"grace_period": 1, "reduction_factor": 3, "epochs": 9, "space": {"schedule": SCHEDULES}}


def curve(trial: sha.Trial, epoch: int) -> float:
    """A made-up val accuracy that depends on the trial's config and the epoch only (as a seeded trial's does)."""
    quality = random.Random(f"{trial.name}").random()
    return 1 - math.exp(-(epoch + 1) * (0.1 + quality))


def test_a_replayed_smaller_sweep_picks_what_the_smaller_sweep_itself_picks(tmp_path):
    trials = [sha.Trial(f"t{i:02d}", SCHEDULES[(i - 1) % 4] if i else "cosine", 0.01 * (i + 1), 0.0)
              for i in range(1 + 4 * 3)]
    trained: dict[str, int] = {}

    def run_rung(live, r):
        for t in live:  # what the tune stage leaves: one epochs.jsonl row per trained epoch, val at rung ends
            trained[t.name] = r
        return {t.name: {"epoch": r - 1, "val_accuracy": curve(t, r - 1)} for t in live}

    kw = {k: TUNE[k] for k in ("grace_period", "reduction_factor", "epochs")} | {"metric": "val_accuracy", "mode": "max"}
    full = sha.successive_halving(trials, run_rung, **kw)
    for t in trials:
        (tmp_path / t.name).mkdir()
        rows = [{"epoch": e, "val_accuracy": curve(t, e)} for e in range(trained[t.name])
                if e + 1 in sha.rungs(TUNE["grace_period"], TUNE["reduction_factor"], TUNE["epochs"])]
        (tmp_path / t.name / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"metric": "val_accuracy", "mode": "max", "winner": {"trial": full.winner.trial.name},
              "outcomes": [{"trial": t.name, "schedule": t.schedule, "lr": t.lr, "warmup": t.warmup} for t in trials]}

    lines = replay("algo", tmp_path, {"tune": {"algo": TUNE}}, record)

    assert len(lines) == 3
    assert f"): {full.winner.trial.name} " in lines[-1] and "the same winner" in lines[-1]
    for k, line in enumerate(lines, start=1):
        if "unknown" in line:
            continue  # the smaller sweep would need an epoch the larger one never trained
        direct = sha.successive_halving(trials[:1 + 4 * k], run_rung, **kw)
        assert f"): {direct.winner.trial.name} " in line and f"{direct.epochs_spent} epochs" in line, (k, line)
