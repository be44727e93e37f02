import json

import numpy as np
import pytest
import torch

from components.config import ScheduleConfig, TrainConfig, to_dict
from components.data.shards import write_shards
from components.models import resnet
from components.training import checkpoint as ckpt
from components.training.loop import (
    EPOCHS,
    HISTORY,
    TrainingDiverged,
    train_loop_per_worker,
)
from tests.conftest import Recorder


def tiny_train(epochs=2, **kw) -> dict:
    cfg = TrainConfig(lr=0.05, epochs=epochs, batch_size=64, log_every=5,
                      schedule=ScheduleConfig(name="cosine", warmup=0.1), **kw)
    cfg.model = resnet.Config(depth=8)
    return to_dict(cfg)


def test_trains_checkpoints_and_logs(digits_shards, tmp_path):
    rec = Recorder()
    m = train_loop_per_worker({"algo": "resnet", "train": tiny_train(3), "data_dir": str(digits_shards),
                               "run_dir": str(tmp_path), "hooks": [rec]})
    assert m["epoch"] == 2 and m["val_accuracy"] > 0.5  # far above chance (0.1) after 3 tiny epochs
    assert [e[0]["epoch"] for e in rec.epochs] == [0, 1, 2]
    assert rec.epochs[0][0]["val_loss"] > rec.epochs[-1][0]["val_loss"]
    lrs = [r["lr"] for r in rec.rows]
    assert max(lrs) == pytest.approx(0.05, rel=0.05) and lrs[-1] < lrs[len(lrs) // 2]  # cosine decays
    state, meta = ckpt.load(ckpt.latest(tmp_path / "checkpoints"))
    assert meta["epoch"] == 2 and meta["config"]["lr"] == 0.05 and "momentum_buffer" in str(state["optimizer"])
    assert len(list((tmp_path / "checkpoints").glob("epoch-*"))) == 2  # older ones pruned


def test_resumes_from_the_latest_checkpoint(digits_shards, tmp_path):
    cfg = {"algo": "resnet", "train": tiny_train(3), "data_dir": str(digits_shards), "run_dir": str(tmp_path)}
    first = train_loop_per_worker({**cfg, "max_epochs": 2})  # "crash" after epoch 1
    assert first["epoch"] == 1
    rec = Recorder()
    resumed = train_loop_per_worker({**cfg, "hooks": [rec]})
    assert [e[0]["epoch"] for e in rec.epochs] == [2]  # only the missing epoch ran
    assert resumed["step"] == first["step"] * 3 // 2
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / EPOCHS).read_text().splitlines()]
    assert epochs == [0, 1, 2]
    steps = [json.loads(x)["step"] for x in (tmp_path / HISTORY).read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_resumed_run_equals_uninterrupted_run(digits_shards, tmp_path):
    cfg = {"algo": "resnet", "train": tiny_train(2), "data_dir": str(digits_shards)}
    whole = train_loop_per_worker({**cfg, "run_dir": str(tmp_path / "a")})
    train_loop_per_worker({**cfg, "run_dir": str(tmp_path / "b"), "max_epochs": 1})
    resumed = train_loop_per_worker({**cfg, "run_dir": str(tmp_path / "b")})
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-4)


def test_nan_loss_stops_the_run_with_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((128, 1, 8, 8)).astype(np.float32)
    x[5, 0, 4, 4] = np.nan  # the centre survives the random shift
    write_shards(tmp_path / "shards", {s: {"input.npy": x, "target.cls": np.arange(128) % 10} for s in ("train", "val")}, 64, {})
    with pytest.raises(TrainingDiverged, match=r"resnet: (the )?loss became nan.* (at|between) steps? \d+.*lower train.resnet.lr"):
        train_loop_per_worker({"algo": "resnet", "train": tiny_train(1), "data_dir": str(tmp_path / "shards"),
                               "run_dir": str(tmp_path / "run")})
    assert ckpt.latest(tmp_path / "run" / "checkpoints") is None  # nothing from a diverged epoch


def test_gradient_clipping_bounds_the_update(digits_shards, tmp_path):
    rec = Recorder()
    train_loop_per_worker({"algo": "resnet", "train": tiny_train(1, grad_clip=0.5), "data_dir": str(digits_shards),
                           "run_dir": str(tmp_path), "hooks": [rec]})
    assert all("grad_norm" in r for r in rec.rows)  # pre-clip norm is logged


def test_exported_weights_load_without_pickle(digits_shards, tmp_path):
    train_loop_per_worker({"algo": "resnet", "train": tiny_train(1), "data_dir": str(digits_shards),
                           "run_dir": str(tmp_path)})
    state, meta = ckpt.load(ckpt.latest(tmp_path / "checkpoints"))
    ckpt.export(tmp_path / "export", state["model"], {"algo": "resnet", "train": meta["config"]})
    weights, m2 = ckpt.load_exported(tmp_path / "export")
    model = resnet.build(resnet.Config(depth=8))
    model.load_state_dict(weights)
    assert torch.equal(model.fc.weight, state["model"]["fc.weight"])


def tiny_gan(epochs=2) -> dict:
    from components.config import OptimizerConfig
    from components.models import gan

    cfg = TrainConfig(lr=1e-3, epochs=epochs, batch_size=64, log_every=5, schedule=ScheduleConfig(name="linear"),
                      optimizer=OptimizerConfig(name="adam", betas=[0.5, 0.999], weight_decay=0.0))
    cfg.model = gan.Config(latent_dim=8, width=8)
    return to_dict(cfg)


def test_a_family_with_its_own_step_trains_validates_and_resumes_exactly(digits_shards, tmp_path):
    """The GAN brings gan.Step (two optimizers) and validate (FID); the loop checkpoints both
    optimizers, and a resumed run draws the same noise as the uninterrupted one."""
    cfg = {"algo": "gan", "train": tiny_gan(2), "data_dir": str(digits_shards)}
    rec = Recorder()
    whole = train_loop_per_worker({**cfg, "run_dir": str(tmp_path / "a"), "hooks": [rec]})
    assert {"val_fid", "val_kid", "val_coverage", "val_class_accuracy"} <= set(whole)
    assert {"d_real", "d_fake", "g_loss", "lr_d"} <= set(rec.rows[0])
    state, _ = ckpt.load(ckpt.latest(tmp_path / "a" / "checkpoints"))
    assert set(state["optimizer"]) == {"g", "d"}
    train_loop_per_worker({**cfg, "run_dir": str(tmp_path / "b"), "max_epochs": 1})
    resumed = train_loop_per_worker({**cfg, "run_dir": str(tmp_path / "b")})
    assert resumed["val_fid"] == pytest.approx(whole["val_fid"], rel=1e-6)
