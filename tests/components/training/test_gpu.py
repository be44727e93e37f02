"""Every algorithm's training loop on a CUDA device, as the train stage runs it (skipped without
one; `benchmarks/gpu_check.py` prints the same run's figures)."""

from __future__ import annotations

import pytest
import torch

from components.config import family_name, to_dict, train_config
from components.training.loop import train_loop_per_worker
from tests.conftest import Recorder, dataset_shards

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("algo", ["resnet", "transformer", "gan", "vae", "diffusion", "gnn", "gnn_graphs",
                                  "gnn_karate", "clip"])
def test_one_epoch_on_the_gpu_in_bf16(algo, repo_params, tmp_path):
    shards = dataset_shards(repo_params, repo_params["algorithms"][algo]["dataset"], tmp_path)
    cfg = train_config(repo_params, algo)
    cfg.epochs, cfg.use_gpu, cfg.num_workers = 1, True, 0
    rec = Recorder()
    train_loop_per_worker({"algo": algo, "family": family_name(repo_params, algo), "train": to_dict(cfg),
                           "data_dir": str(shards), "run_dir": str(tmp_path / "run"), "hooks": [rec]})
    assert len(rec.epochs) == 1 and all(v == v for v in rec.epochs[0][0].values())  # finished, nothing NaN
