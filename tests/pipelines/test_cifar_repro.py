"""A team's own data, no code change: ResNet on a CIFAR-10-format folder (written here in the
real python-pickle format) through all six stages with real `dvc repro`, Ray and MLflow."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from pipelines import dag
from tests.components.data.test_images import write_cifar
from tests.conftest import REPO, copy_project

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def cifar_params(source: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["algorithms"] = {"resnet": {"family": "resnet", "dataset": "cifar"}}
    params["data"] = {"cifar": {"type": "images", "source": "cifar10", "path": source, "samples_per_shard": 40,
                                "val_fraction": 0.2, "fit_evaluator": False,
                                "augment": {"style": "cifar", "pad": 4}}}  # flips: the CIFAR default
    params["train"] = {"resnet": {**params["train"]["resnet"], "epochs": 2, "batch_size": 32, "log_every": 2}}
    params["train"]["resnet"]["model"]["depth"] = 8
    params["tune"] = {"resnet": {**params["tune"]["resnet"], "samples_per_schedule": 1, "epochs": 1,
                                 "grace_period": 1}}
    params["tune"]["resnet"]["space"]["schedule"] = ["cosine"]
    return params


def run(cmd: list[str], cwd, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=850, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_resnet_on_a_cifar_folder_through_all_six_stages(tmp_path):
    write_cifar(tmp_path / "downloads", per_batch=40)  # 200 train + 40 test images, 3x32x32
    root = tmp_path / "project"
    root.mkdir()
    copy_project(root, cifar_params(str(tmp_path / "downloads")), with_dvc=True)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert str(tmp_path / "downloads") in stages["ingest-cifar"]["deps"]  # the source is a dependency
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.com", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@example.com", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        run(cmd, root, env)
    out = run(["dvc", "repro"], root, env).stdout
    for stage in ("ingest-cifar", "preprocess-cifar", "train-resnet", "tune-resnet", "evaluate-resnet",
                  "register-resnet"):
        assert f"Running stage '{dag.address(stage)}'" in out
    stats = json.loads((root / "data/shards/cifar/stats.json").read_text())
    assert stats["source"] == "cifar10" and stats["format"] == "cifar python batches"
    assert any(k.endswith("data_batch_1") and len(v) == 64 for k, v in stats["source_sha256"].items())
    assert stats["input_shape"] == [3, 32, 32] and stats["image"]["augment"]["flip"] is True
    evaluation = json.loads((root / "metrics/eval/resnet.json").read_text())
    selected = evaluation[evaluation["selected"]]
    assert selected["num_samples"] == 40  # scored on CIFAR's own test batch
    registered = json.loads((root / "metrics/register/resnet.json").read_text())
    assert registered["version"] == 1 and registered["test_accuracy"] == selected["accuracy"]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("resnet", "1")
    digest = next(v for k, v in stats["source_sha256"].items() if k.endswith("data_batch_1"))
    assert "cifar10 (cifar python batches)" in version.description and digest in version.description
    assert version.tags["data_source"] == "cifar10"
    assert "up to date" in run(["dvc", "status"], root, env).stdout
