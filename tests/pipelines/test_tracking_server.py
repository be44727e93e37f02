"""Stages against a real `mlflow server` on 127.0.0.1 (MLFLOW_TRACKING_URI), and a clear,
prompt error when the server named by the variable does not answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_project, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'server.db'}", "--default-artifact-root", (root / "artifacts").as_uri(),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["gnn_karate"].update(epochs=5, tuned=False)  # train alone, no sweep before it
    return copy_project(tmp_path_factory.mktemp("project"), params)


def stage(root: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_stage_logs_its_run_to_the_tracking_server(server, project):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(project)}
    env.pop("RAY_ADDRESS", None)
    for args in (("pipelines.ingest", "--dataset", "karate"), ("pipelines.preprocess", "--dataset", "karate"),
                 ("pipelines.train", "--algo", "gnn_karate")):
        proc = stage(project, env, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("gnn_karate")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "train"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 5  # one per epoch, none twice
    assert not (project / "mlflow.db").exists()  # nothing went to the local store


def test_an_unreachable_tracking_server_fails_fast_and_names_the_variable(project):
    env = {**os.environ, "PYTHONPATH": str(project)}
    if not (project / "data" / "shards" / "karate").exists():  # the stage reads its shards before MLflow
        for args in (("pipelines.ingest", "--dataset", "karate"), ("pipelines.preprocess", "--dataset", "karate")):
            assert stage(project, env, *args).returncode == 0
    port = free_port()  # bound a moment ago, closed now: nothing listens
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = stage(project, env, "pipelines.train", "--algo", "gnn_karate", timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2 and elapsed < 60  # MLflow's own retries would take about four minutes
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
