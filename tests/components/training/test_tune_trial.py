"""A sweep trial's process: it trains and reports, and never imports MLflow (the sweep's driver
logs every trial: ``tune_run._TrialLog``, below and through real sweeps in tests/pipelines/test_tune.py);
it imports torch when it trains, not when Ray Tune starts it (unpickling ``tune_run``)."""

import json
import subprocess
import sys

from tests.conftest import REPO

TRIAL = """
import json, sys
from components.training import tune_run
started = sorted(m for m in ("torch", "mlflow") if m in sys.modules)  # what a process Tune starts has loaded
from components.config import ScheduleConfig, TrainConfig
from components.models import resnet
from components.training.loop import EPOCHS, read_rows

base = TrainConfig(lr=0.05, epochs=2, batch_size=64, schedule=ScheduleConfig(name="cosine"))
base.model = resnet.Config(depth=8)
trial = {"name": "t01", "schedule": "cosine", "lr": 0.05, "warmup": 0.0, "run_id": "0" * 32}
tune_run._sweep_trial({"trial": trial, "epochs": 2}, algo="resnet", family="resnet", base=base, data_dir=sys.argv[1],
                      runs_root=sys.argv[2], workers_per_trial=0, storage_path=sys.argv[2], train_fraction=1.0)
print(json.dumps({"epochs": [e["epoch"] for e in read_rows(sys.argv[2] + "/t01/" + EPOCHS)],
                  "mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"), "started": started}))
"""


def test_a_sweep_trial_trains_its_rung_without_importing_mlflow_and_starts_without_torch(digits_shards, tmp_path):
    proc = subprocess.run([sys.executable, "-c", TRIAL, str(digits_shards), str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["epochs"] == [0, 1] and out["mlflow"] == [] and out["started"] == [], out


def test_the_drivers_trial_log_sends_each_new_row_to_the_trials_run_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from components.training import tune_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("sweep")).info.run_id
    trial_dir = tmp_path / "runs" / "t01"
    trial_dir.mkdir(parents=True)

    def append(name: str, rows: list[dict]) -> None:
        with open(trial_dir / name, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    log = tune_run._TrialLog(uri, str(tmp_path / "runs"), {"t01": run_id, "t02": ""})
    append("steps.jsonl", [{"step": s, "epoch": 0, "loss": 1.0 / (s + 1)} for s in range(3)])
    append("epochs.jsonl", [{"epoch": 0, "train_loss": 0.5, "val_accuracy": 0.6}])
    log.log("t01")
    log.log("t01")  # nothing new: nothing logged twice
    log.log("t02")  # a trial without a run: nothing to log, no error
    append("steps.jsonl", [{"step": s, "epoch": 1, "loss": 1.0 / (s + 1)} for s in range(3, 5)])
    append("epochs.jsonl", [{"epoch": 1, "train_loss": 0.4, "val_accuracy": 0.7}])
    log.log("t01")
    log.flush()
    assert [m.step for m in client.get_metric_history(run_id, "step/loss")] == [0, 1, 2, 3, 4]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_accuracy")] == [(0, 0.6), (1, 0.7)]


def test_the_trial_log_reads_only_the_rows_a_table_gained_and_a_rewritten_table_from_its_start(tmp_path):
    from components.training import storage, tune_run

    table = tmp_path / "steps.jsonl"
    tail = tune_run._TableTail(str(table))
    assert tail.rows() == []  # not written yet
    storage.append_text(str(table), "".join(json.dumps({"step": s}) + "\n" for s in range(3)))
    assert [r["step"] for r in tail.rows()] == [0, 1, 2]
    with open(table, "a") as f:
        f.write(json.dumps({"step": 3}) + "\n" + '{"step": 4')  # a row being written
    assert [r["step"] for r in tail.rows()] == [3]
    with open(table, "a") as f:
        f.write("}\n")
    assert [r["step"] for r in tail.rows()] == [4]
    # A resumed run drops the rows past its checkpoint (a new file), then appends.
    storage.write_text(str(table), "".join(json.dumps({"step": s}) + "\n" for s in range(2)))
    storage.append_text(str(table), json.dumps({"step": 2}) + "\n")
    assert [r["step"] for r in tail.rows()] == [0, 1, 2]
    assert tail.rows() == []
