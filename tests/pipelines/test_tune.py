"""The tune stage with real Ray Tune and MLflow: the same winner at any concurrency, every trial's
metrics and status in its own nested run, and a winner that train trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, copy_project, stage_command
from tests.pipelines.test_cifar_repro import (
    run,  # a stage process that must succeed, its output on failure
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def sweep_params(max_concurrent: int, workers_per_trial: int = 0) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["algorithms"] = {"resnet": {"family": "resnet", "dataset": "digits"}}
    params["data"] = {"digits": {**params["data"]["digits"], "samples_per_shard": 128}}
    params["data"]["digits"]["evaluator"]["epochs"] = 1
    params["train"] = {"resnet": {**params["train"]["resnet"], "epochs": 2, "batch_size": 128, "log_every": 2}}
    params["train"]["resnet"]["model"]["depth"] = 8
    params["tune"] = {"resnet": {**params["tune"]["resnet"], "samples_per_schedule": 2, "epochs": 3, "grace_period": 1,
                                 "max_concurrent": max_concurrent, "workers_per_trial": workers_per_trial}}
    # 7 trials: the first rung keeps 2 (and the control, if cut) for the second, so both of its rungs
    # have trials for two processes.
    params["tune"]["resnet"]["space"].update(schedule=["cosine", "onecycle", "constant"], lr=[0.01, 1.0])
    return params


ENV_DROP = ("MLFLOW_", "RAY_ADDRESS")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_DROP)}
    env.update(RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    return env


def _sweep(root, params: dict, data_from=None) -> tuple[str, dict, str]:
    """One tune stage process in a fresh project copy: (best.yaml text, sweep.json, stdout). The
    shards come from ``data_from`` where given (the same data params: the same shards and
    evaluator network), else from the ingest and preprocess stages."""
    root.mkdir()
    copy_project(root, params)
    env = _env()
    if data_from is None:
        run(stage_command("pipelines.ingest", "--dataset", "digits"), root, env)
        run(stage_command("pipelines.preprocess", "--dataset", "digits"), root, env)
    else:
        shutil.copytree(data_from / "data", root / "data")
    out = run(stage_command("pipelines.tune", "--algo", "resnet"), root, env).stdout
    assert "winner" in out
    return ((root / "models/resnet/tune/best.yaml").read_text(),
            json.loads((root / "models/resnet/tune/sweep.json").read_text()), out)


def _processes_by_rung(root) -> dict[int, list[set[int]]]:
    """By rung (its epochs), each of its Tune trials' process ids, from Tune's own trial folders."""
    out: dict[int, list[set[int]]] = {}
    for trial in (root / ".runs/ray").glob("resnet-tune-*/_sweep_trial_*"):
        epochs = json.loads((trial / "params.json").read_text())["epochs"]
        rows = [json.loads(x) for x in (trial / "result.json").read_text().splitlines() if x.strip()]
        out.setdefault(epochs, []).append({r["pid"] for r in rows})
    return out


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory):
    """The reference: the sweep at concurrency 1, on shards made by the stages themselves."""
    root = tmp_path_factory.mktemp("tune") / "c1"
    best, sweep, out = _sweep(root, sweep_params(1))
    assert "7 trials" in out
    return root, best, sweep


def test_the_sweep_picks_the_same_winner_at_any_concurrency_and_logs_every_trial(tmp_path, serial_sweep):
    """Concurrency 2 against 1 in local mode: every decision and every number the same; every
    trial in its own nested MLflow run; and train trains the winner."""
    c1, best1, sweep1 = serial_sweep
    root2 = tmp_path / "c2"
    best2, sweep2, out = _sweep(root2, sweep_params(2), data_from=c1)
    assert "7 trials" in out
    # Every decision, every trial's metric at every rung, and the winner: identical.
    assert best1 == best2 and sweep1 == sweep2
    # Two processes train the whole sweep, both busy in every rung with two trials or more: a rung's
    # decision hands Tune the next rung's trials before the last ones' processes return, so Tune
    # keeps both (it ended all but one at a rung's end, and the next rung ran in the one it kept).
    for c, root in ((1, c1), (2, root2)):
        by_rung = _processes_by_rung(root)
        assert sorted(by_rung) == [r for r, _ in sweep1["rungs"]], by_rung
        assert all(len(p) == 1 for trials in by_rung.values() for p in trials), by_rung  # a trial: one process
        assert len(set().union(*(p for trials in by_rung.values() for p in trials))) == c, by_rung
        for trials in by_rung.values():
            assert len(set().union(*trials)) == min(c, len(trials)), by_rung
    # params.yaml's own config (t00), when the first rung cuts it, goes on to the end as the control:
    # what the sweep bought is measured at the final budget.
    control = sweep1["outcomes"][0]["status"] == "control"
    assert sweep1["rungs"] == [[1, 7], [3, 3 if control else 2]] and sweep1["epochs_spent"] == (13 if control else 11)
    assert sweep1["same_budget"]["epochs"] == 3 and sweep1["outcomes"][0]["epochs"] == 3
    assert [o["status"] for o in sweep1["outcomes"]].count("completed") == 2
    best = yaml.safe_load(best1)
    assert set(best) == {"lr", "schedule"} and set(best["schedule"]) == {"name", "warmup"}
    assert best["lr"] == sweep1["winner"]["lr"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root2 / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resnet").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "tune" and "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 7 and parent.data.tags["best_trial"] == sweep2["winner"]["trial"]
    for r in trials:
        name, status = r.data.tags["trial"], r.data.tags["status"]
        outcome = next(o for o in sweep2["outcomes"] if o["trial"] == name)
        assert status == outcome["status"]
        assert r.info.status == ("KILLED" if status == "early-stopped" else "FINISHED")
        assert float(r.data.params["lr"]) == outcome["lr"] and r.data.params["schedule.name"] == outcome["schedule"]
        # Its own val metric at the end of every rung it trained (what the decisions read; a trial
        # validates nothing else), each once, and its train loss every epoch and LR per logged step.
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [e - 1 for e, _ in sweep2["rungs"] if e <= outcome["epochs"]]
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss")) == list(
            range(outcome["epochs"]))
        assert client.get_metric_history(r.info.run_id, "step/lr")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep.png", "trials.csv", "sweep.json"}

    # train trains the winner at its own epochs, naming the sweep that chose it.
    run(stage_command("pipelines.train", "--algo", "resnet"), root2, _env())
    meta = json.loads((root2 / "models/resnet/train/config.json").read_text())
    assert meta["train"]["lr"] == best["lr"] and meta["train"]["schedule"]["name"] == best["schedule"]["name"]
    assert meta["train"]["epochs"] == 2 and meta["tune_run_id"] == parent.info.run_id


def test_a_ddp_job_per_trial_gets_the_numbers_of_local_mode(tmp_path, serial_sweep):
    """A 1-worker Ray Train DDP job per trial (``workers_per_trial: 1``), on a one-rung sweep of the
    same first two trials: params.yaml's own config (which always reaches the last rung, as a
    competitor or as the control) ends with the same val accuracy as in local mode."""
    c1, _, sweep1 = serial_sweep
    ddp = sweep_params(0, workers_per_trial=1)  # as many at once as fit: on 2 CPUs, one (1.01 CPUs each)
    ddp["tune"]["resnet"].update(samples_per_schedule=1, grace_period=3)  # t00 and t01, one rung at 3 epochs
    ddp["tune"]["resnet"]["space"]["schedule"] = ["cosine"]  # t01: the first draw, cosine, as in c1
    _, sweep_ddp, out = _sweep(tmp_path / "ddp", ddp, data_from=c1)
    assert "2 trials" in out
    assert [o["status"] for o in sweep_ddp["outcomes"]] == ["completed", "completed"] and sweep_ddp["rungs"] == [[3, 2]]
    for a, b in zip(sweep_ddp["outcomes"], sweep1["outcomes"]):
        assert (a["trial"], a["lr"], a["schedule"]) == (b["trial"], b["lr"], b["schedule"])
        if b["epochs"] == 3:  # t00 always; t01 where c1's first rung kept it
            assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6), (a, b)


def test_train_without_a_sweep_result_says_what_to_run(tmp_path):
    root = copy_project(tmp_path, sweep_params(0))
    proc = subprocess.run([sys.executable, "-m", "pipelines.train", "--algo", "resnet"], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "models/resnet/tune/best.yaml is missing: run `dvc repro stages/resnet/dvc.yaml:tune-resnet`" in proc.stderr
    assert "train.resnet.tuned: false" in proc.stderr
