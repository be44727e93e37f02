import json

import numpy as np
import pytest
import torch

from components.config import ScheduleConfig, TrainConfig, to_dict
from components.data.writer import write_shards
from components.models import resnet
from components.params import train_config_from_dict
from components.training import checkpoint as ckpt
from components.training.loop import (
    EPOCHS,
    HISTORY,
    LoopConfig,
    TrainingDiverged,
    train_loop_per_worker,
)
from tests.conftest import Recorder


def tiny_train(epochs=2, **kw) -> dict:
    cfg = TrainConfig(lr=0.05, epochs=epochs, batch_size=64, log_every=5,
                      schedule=ScheduleConfig(name="cosine", warmup=0.1), **kw)
    cfg.model = resnet.Config(depth=8)
    return to_dict(cfg)


def test_loop_config_names_an_unknown_or_missing_key_and_types_its_fields(tmp_path):
    with pytest.raises(TypeError, match=r"unknown keys \['epochs'\]; missing keys \['run_dir'\]; the loop takes"):
        LoopConfig.of({"algo": "resnet", "train": tiny_train(), "data_dir": tmp_path, "epochs": 3})
    config = LoopConfig.of({"algo": "resnet", "train": tiny_train(), "data_dir": tmp_path, "run_dir": tmp_path,
                            "hooks": [Recorder()]})
    assert isinstance(config.train, TrainConfig) and isinstance(config.train.model, resnet.Config)
    assert config.data_dir == str(tmp_path) and isinstance(config.hooks, tuple) and LoopConfig.of(config) is config
    assert LoopConfig.of(config.as_dict()) == config  # what Ray Train hands a worker reads back the same


def test_a_typed_train_config_is_copied_not_bound_in_place(digits_shards, tmp_path):
    cfg = train_config_from_dict("resnet", tiny_train(1))
    train_loop_per_worker(LoopConfig("resnet", cfg, str(digits_shards), str(tmp_path)))
    assert cfg.model == resnet.Config(depth=8) and not cfg.model.mean  # bind fills mean and std in the loop's copy


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


@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_gradient_clipping_bounds_the_update(digits_shards, clip):
    """One plain SGD step (lr 1, no momentum or decay) moves the weights by exactly the gradient:
    with clipping its norm is at most the clip value, without it the much larger raw norm."""
    from components.config import OptimizerConfig
    from components.data.registry import open_split
    from components.data.shards import read_stats
    from components.training.steps import SupervisedStep

    cfg = TrainConfig(lr=1.0, epochs=1, batch_size=64, grad_clip=clip, schedule=ScheduleConfig(name="constant"),
                      optimizer=OptimizerConfig(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0))
    cfg.model = resnet.bind(resnet.Config(depth=8), read_stats(digits_shards), digits_shards)
    torch.manual_seed(0)
    model = resnet.build(cfg.model)
    batch = next(iter(open_split(digits_shards, "train", batch_size=64, uint8_images=True)))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    out = SupervisedStep(model, cfg, resnet, total_steps=1)(batch, 0)
    moved = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
    if clip:
        assert float(out.log["grad_norm"]) > 10 * clip  # the raw gradient is far above the clip value ...
        assert moved <= clip * (1 + 1e-4)  # ... and the update is held to it
        assert moved == pytest.approx(clip, rel=1e-3)
    else:
        assert moved > 10 * 0.01  # the same step unclipped: the test above could fail
