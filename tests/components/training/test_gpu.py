"""Every algorithm's training loop on a CUDA device, as the train stage runs it (skipped without
one; `benchmarks/gpu_check.py` prints the same run's figures)."""

from __future__ import annotations

import pytest
import torch

from components.config import to_dict
from components.params import family_name, train_config
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


@pytest.mark.parametrize("algo", ["resnet", "transformer", "gan", "vae", "diffusion", "clip"])
def test_a_training_step_never_waits_for_the_gpu(algo, repo_params, tmp_path):
    """The step and the meter queue work only: CUDA's sync debug mode raises on any host sync
    (``.item()``, ``float()``, a blocking copy) between the reads the meter makes every log_every steps."""
    from components.data.shards import ShardDataset, read_stats
    from components.models import get_family
    from components.training.loop import _autocast
    from components.training.meter import StepMeter
    from components.training.steps import SupervisedStep

    shards = dataset_shards(repo_params, repo_params["algorithms"][algo]["dataset"], tmp_path)
    cfg = train_config(repo_params, algo)
    family = get_family(family_name(repo_params, algo))
    cfg.model = family.bind(cfg.model, read_stats(shards), shards)
    ds = ShardDataset(shards, "train", batch_size=cfg.batch_size, uint8_images=True)
    device = torch.device("cuda")
    batch = tuple(t.to(device) for t in next(iter(ds)))
    batch = ds.batcher.on_device(batch)
    model = family.build(cfg.model).to(device)
    step = getattr(family, "Step", SupervisedStep)(model, cfg, family, 10, lambda: _autocast("bf16", device))
    meter = StepMeter(device, algo, "")
    step(batch, 0)  # the first step allocates optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 5):
            meter.add(step(batch, i))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert meter.totals(5, 0, {})[2].item() > 0


def test_the_speed_options_train_on_the_gpu(repo_params, tmp_path):
    shards = dataset_shards(repo_params, "digits", tmp_path)
    cfg = train_config(repo_params, "resnet")
    cfg.epochs, cfg.use_gpu, cfg.num_workers = 2, True, 0
    cfg.channels_last, cfg.compile, cfg.loader_workers, cfg.loader_persistent = True, True, 2, True
    cfg.optimizer.implementation = "fused"
    rec = Recorder()
    m = train_loop_per_worker({"algo": "resnet", "train": to_dict(cfg), "data_dir": str(shards),
                               "run_dir": str(tmp_path / "run"), "hooks": [rec]})
    assert m["val_accuracy"] > 0.5 and len(rec.epochs) == 2
