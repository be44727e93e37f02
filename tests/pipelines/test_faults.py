"""Faults: a Ray Train worker killed mid-epoch, and `dvc repro` interrupted with Ctrl-C.

Both are real: a SIGKILL to a live RayTrainWorker process of a 2-worker DDP group (Ray
Train restarts the group from the last reported checkpoint), and a SIGINT to the process
group of a `dvc repro` in a temporary git repository.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from components.config import ScheduleConfig, TrainConfig, to_dict
from components.models import resnet
from components.tracking import MlflowClient, MlflowHook
from components.training import checkpoint as ckpt
from components.training import launch
from components.training.loop import EPOCHS, HISTORY, RESUMES, read_rows
from pipelines import dag
from tests.conftest import copy_project

EPOCHS_RUN = 4
EPOCHS_CTRL_C = 15  # Ctrl-C lands after epoch 3, seconds before the end (an epoch: about half a second)


def ddp_config(run_dir: Path, data_dir: Path, hooks: list) -> dict:
    cfg = TrainConfig(lr=0.05, epochs=EPOCHS_RUN, batch_size=8, log_every=5,
                      schedule=ScheduleConfig(name="cosine", warmup=0.1))
    cfg.model = resnet.Config(depth=8)
    return {"algo": "resnet", "train": to_dict(cfg), "data_dir": str(data_dir), "run_dir": str(run_dir),
            "hooks": hooks}


def train_workers() -> list[psutil.Process]:
    """This test's Ray Train workers: under the local Ray this process started (its raylet is a
    child of ours), never those of another test's Ray running beside it (pytest -n)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("RayTrainWorker" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:  # exited meanwhile
            continue
    return found


class Killer(threading.Thread):
    """Once epoch 0 is logged to MLflow, SIGKILLs one worker process halfway into epoch 1."""

    def __init__(self, run_dir: Path, uri: str, run_id: str):
        super().__init__(daemon=True)
        self.run_dir, self.client, self.run_id = run_dir, MlflowClient(uri), run_id
        self.killed, self.epochs_done_at_kill, self.checkpoint_at_kill = None, None, None

    def run(self) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.client.get_metric_history(self.run_id, "val_accuracy"):
                rows = read_rows(str(self.run_dir / EPOCHS))
                time.sleep(rows[0]["epoch_time_s"] / 2)
                workers = train_workers()
                if workers:
                    victim = workers[-1]
                    self.epochs_done_at_kill = len(read_rows(str(self.run_dir / EPOCHS)))
                    latest = ckpt.latest(str(self.run_dir / "checkpoints"))
                    self.checkpoint_at_kill = ckpt.epoch_of(latest) if latest else -1
                    victim.send_signal(signal.SIGKILL)
                    self.killed = victim.pid
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def new_run(uri: str, name: str) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults") or client.get_experiment(client.create_experiment("faults"))
    return client.create_run(exp.experiment_id, run_name=name).info.run_id


def tracked_fit(tmp: Path, uri: str, run_id: str, data_dir: Path, name: str, max_failures: int) -> dict:
    metrics = launch.fit(ddp_config(tmp / name, data_dir, [MlflowHook(uri, run_id), launch.RayTrainReport()]),
                         num_workers=2, use_gpu=False, storage_path=str(tmp / "ray"), name=name,
                         max_failures=max_failures, ray_num_cpus=2)
    MlflowClient(uri).set_terminated(run_id, "FINISHED")
    return metrics


def test_a_killed_worker_is_replaced_and_the_run_resumes_from_its_last_epoch(digits_shards, tmp_path, tracking_store):
    ref_run = new_run(tracking_store, "uninterrupted")
    reference = tracked_fit(tmp_path, tracking_store, ref_run, digits_shards, "uninterrupted", max_failures=0)

    run_id = new_run(tracking_store, "killed")
    killer = Killer(tmp_path / "killed", tracking_store, run_id)
    killer.start()
    resumed = tracked_fit(tmp_path, tracking_store, run_id, digits_shards, "killed", max_failures=1)
    killer.join(timeout=10)
    assert killer.killed is not None, "no RayTrainWorker process was found to kill"
    # When the kill lands depends on the machine's speed (a slow one may be an epoch further on),
    # so the test asserts the invariant: the run was killed mid-run, Ray Train replaced the group
    # once, and the run resumed after the last complete checkpoint at the time of the kill (from
    # Ray's or the run directory's, whichever is newer; one written in the instant before the
    # kill counts too), so at most the epoch in flight and one finished epoch are repeated.
    done, saved = killer.epochs_done_at_kill, killer.checkpoint_at_kill
    assert 1 <= done < EPOCHS_RUN, f"the kill landed after {done} of {EPOCHS_RUN} epochs"
    resumes = read_rows(str(tmp_path / "killed" / RESUMES))
    assert len(resumes) == 1 and resumes[0]["source"] in ("ray", "run_dir"), resumes
    assert max(saved, 0) <= resumes[0]["from_epoch"] <= done - 1 and done - 1 - resumes[0]["from_epoch"] <= 1, \
        (resumes, done, saved)
    assert [e["epoch"] for e in read_rows(str(tmp_path / "killed" / EPOCHS))] == list(range(EPOCHS_RUN))
    steps = [r["step"] for r in read_rows(str(tmp_path / "killed" / HISTORY))]
    assert steps == [r["step"] for r in read_rows(str(tmp_path / "uninterrupted" / HISTORY))]

    # MLflow: every step and every epoch exactly once, as in the uninterrupted run.
    client = MlflowClient(tracking_store)
    for key in ("step/loss", "val_accuracy", "train_loss"):
        got = [m.step for m in client.get_metric_history(run_id, key)]
        want = [m.step for m in client.get_metric_history(ref_run, key)]
        assert sorted(got) == sorted(want) and len(set(got)) == len(got) == len(want), key
    assert len(client.get_metric_history(run_id, "val_accuracy")) == EPOCHS_RUN

    # Same data order, the restored weights and optimizer, and a random stream fixed by (seed, epoch,
    # rank): the resumed run ends where the uninterrupted one does (to 1e-6; in practice bit for bit).
    assert resumed["epoch"] == reference["epoch"] == EPOCHS_RUN - 1
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6), key


# ------------------------------------------------------------------- Ctrl-C during dvc repro

def git_dvc_project(root: Path, params: dict) -> dict:
    copy_project(root, params, with_dvc=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qm", "p"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return env


def debris(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for d in ("data", "models", "metrics", "plots", "reports") if (root / d).exists()
            for p in (root / d).rglob("*") if ".tmp-" in p.name]


def test_ctrl_c_during_train_leaves_no_half_output_and_repro_resumes(tmp_path, repo_params):
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["data"]["digits"]["evaluator"]["epochs"] = 1
    params["train"]["resnet"].update(epochs=EPOCHS_CTRL_C, num_workers=0, checkpoint_every=1,  # a checkpoint per epoch
                                     tuned=False)  # train alone: no sweep runs before it
    params["train"]["resnet"]["model"]["depth"] = 8  # what is tested is the interruption, not the network
    env = git_dvc_project(tmp_path, params)

    proc = subprocess.Popen(["dvc", "repro", dag.address("train-resnet")], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    epochs_file = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / ".runs" / "runs" / "resnet").glob("train-*/epochs.jsonl"))
        if found and len(read_rows(str(found[0]))) >= 3:
            epochs_file = found[0]
            break
        time.sleep(0.05)
    assert epochs_file is not None, f"train never got going:\n{proc.communicate()[0][-3000:]}"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    out = proc.communicate(timeout=120)[0]
    done_at_interrupt = len(read_rows(str(epochs_file)))
    assert proc.returncode != 0 and done_at_interrupt < EPOCHS_CTRL_C, out[-2000:]
    # An epoch's rows are appended before its checkpoint is written, so Ctrl-C may land between the
    # two: the last complete checkpoint is then one epoch behind the table, and resume truncates it.
    latest = ckpt.latest(str(epochs_file.parent / "checkpoints"))
    assert latest is not None
    resume_after = ckpt.epoch_of(latest) + 1
    assert done_at_interrupt - 1 <= resume_after <= done_at_interrupt

    # Nothing half-written: no train output at all, no temporaries, and DVC did not record the stage.
    assert not (tmp_path / "models" / "resnet" / "train").exists()
    assert not (tmp_path / "metrics" / "train" / "resnet.json").exists()
    assert debris(tmp_path) == []
    lock = tmp_path / "stages" / "resnet" / "dvc.lock"
    assert not lock.exists() or "train-resnet" not in lock.read_text()
    assert (tmp_path / "data" / "shards" / "digits" / "stats.json").exists()  # earlier stages kept

    again = subprocess.run(["dvc", "repro", dag.address("train-resnet")], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming after epoch {resume_after} of {EPOCHS_CTRL_C}" in again.stdout, again.stdout[-3000:]
    assert "Running stage 'preprocess-digits'" not in again.stdout  # finished stages are not redone
    epochs = [e["epoch"] for e in read_rows(str(epochs_file))]
    assert epochs == list(range(EPOCHS_CTRL_C))  # every epoch once: the interrupted one was truncated and redone
    assert sorted(p.name for p in (tmp_path / "models" / "resnet" / "train").iterdir()) == ["config.json",
                                                                                            "model.safetensors"]
    status = subprocess.run(["dvc", "status", dag.address("train-resnet")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
