"""The speed options of train.<algo> (channels_last, fused/foreach optimizers, persistent loader
workers with prefetch, torch.compile, the shard cache, checkpoint_every) change no result beyond
float noise, and the reader still yields every sample once per epoch with them."""

import shutil

import pytest
import torch

from components.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    to_dict,
)
from components.data.registry import open_split
from components.models import resnet
from components.params import train_config_from_dict
from components.training import checkpoint as ckpt
from components.training.loop import train_loop_per_worker
from tests.conftest import Recorder


def tiny(epochs=1, optimizer=None, lr=0.05, **kw) -> dict:
    cfg = TrainConfig(lr=lr, epochs=epochs, batch_size=64, log_every=5, optimizer=optimizer or OptimizerConfig(),
                      schedule=ScheduleConfig(name="cosine", warmup=0.1), **kw)
    cfg.model = resnet.Config(depth=8)
    return to_dict(cfg)


def one_epoch(shards, run_dir, **kw) -> dict:  # one epoch unless epochs= says otherwise
    return train_loop_per_worker({"algo": "resnet", "train": tiny(**kw), "data_dir": str(shards), "run_dir": str(run_dir)})


@pytest.fixture(scope="module")
def baseline(digits_shards, tmp_path_factory):
    return one_epoch(digits_shards, tmp_path_factory.mktemp("baseline"))


@pytest.mark.parametrize("options", [
    {"channels_last": True},
    {"optimizer": OptimizerConfig(implementation="fused")},
    {"optimizer": OptimizerConfig(implementation="foreach")},
    {"data_cache_mb": 0},
], ids=["channels_last", "fused", "foreach", "no_cache"])
def test_a_speed_option_changes_no_result_beyond_float_noise(options, baseline, digits_shards, tmp_path):
    got = one_epoch(digits_shards, tmp_path, **options)
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(baseline[key], rel=1e-3, abs=1e-4), key
    # An accuracy counts argmaxes: float noise flips the few samples at a decision boundary (a fused
    # SGD on a 2-core AMD EPYC: 2 of the 1,259 train samples after one epoch), never more than a handful.
    for key in ("train_accuracy", "val_accuracy"):
        assert got[key] == pytest.approx(baseline[key], abs=0.005), key


def test_persistent_loader_workers_train_exactly_as_fresh_ones(digits_shards, tmp_path):
    """Two loader workers read their own shards (another order than none); kept alive across
    epochs, with their shard cache and a deeper prefetch, they give the same run."""
    fresh = one_epoch(digits_shards, tmp_path / "a", epochs=2, loader_workers=2)
    kept = one_epoch(digits_shards, tmp_path / "b", epochs=2, loader_workers=2, loader_persistent=True,
                     loader_prefetch=4)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert kept[key] == pytest.approx(fresh[key], rel=1e-6), key


def test_compile_changes_no_result_beyond_float_noise(digits_shards, tmp_path):
    """torch.compile through inductor on the CPU (about a minute for ResNet-8 on 2 cores)."""
    plain = one_epoch(digits_shards, tmp_path / "a", lr=0.01)
    compiled = one_epoch(digits_shards, tmp_path / "b", lr=0.01, compile=True)
    state, _ = ckpt.load(ckpt.latest(tmp_path / "b" / "checkpoints"))
    assert not any("_orig_mod" in k for k in state["model"])  # the checkpoint loads into a plain model
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert compiled[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-4), key


def test_fused_rmsprop_is_refused_with_the_fix():
    from components.config import parse

    with pytest.raises(ConfigError, match="no fused RMSProp"):
        parse(OptimizerConfig, {"name": "rmsprop", "implementation": "fused"}, "train.x.optimizer")


def test_checkpoint_every_saves_every_kth_and_the_last_epoch(digits_shards, tmp_path):
    rec = Recorder()
    train_loop_per_worker({"algo": "resnet", "train": tiny(epochs=5, checkpoint_every=2), "data_dir": str(digits_shards),
                           "run_dir": str(tmp_path), "hooks": [rec]})
    saved = [m["epoch"] for m, d in rec.epochs if d is not None]
    assert saved == [1, 3, 4]
    assert ckpt.epoch_of(ckpt.latest(tmp_path / "checkpoints")) == 4


def test_ray_ddp_reports_the_checkpointed_epochs_and_validates_every_sample_once(digits_shards, tmp_path):
    """Two Ray Train workers, 3 epochs, a checkpoint every 2: Ray hears of epochs 1 and 2 only (a
    report is a barrier of every rank), each with rank 0's checkpoint; the validation dealt to the
    ranks by sample gives exactly what one process computes on the final weights."""
    import json

    import ray.train

    from components.training import launch
    from components.training.loop import _Context, evaluate_split

    log = tmp_path / "reports.jsonl"

    class Reports(ray.train.UserCallback):  # runs in Ray Train's controller process
        def after_report(self, run_context, metrics, checkpoint):
            with open(log, "a") as f:
                f.write(json.dumps({"epochs": [m["epoch"] for m in metrics], "checkpoint": checkpoint is not None}) + "\n")

    train = tiny(epochs=3, checkpoint_every=2)
    try:
        metrics = launch.fit({"algo": "resnet", "train": train, "data_dir": str(digits_shards),
                              "run_dir": str(tmp_path / "run"), "hooks": [launch.RayTrainReport(2, 3)]},
                             num_workers=2, use_gpu=False, storage_path=str(tmp_path / "ray"), name="reports",
                             ray_num_cpus=2, callbacks=[Reports()])
    finally:
        # A local Ray left running holds its dashboard agent's port: a Ray cluster a later test
        # starts in this process would then have no job agent ("No available agent").
        ray.shutdown()
    reports = [json.loads(x) for x in log.read_text().splitlines()]
    assert reports == [{"epochs": [1, 1], "checkpoint": True}, {"epochs": [2, 2], "checkpoint": True}]

    state, meta = ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))
    bound = train_config_from_dict("resnet", meta["config"]).model
    model = resnet.build(bound)
    model.load_state_dict(state["model"])
    val = open_split(digits_shards, "val", batch_size=256)
    single = evaluate_split(model, resnet, bound, val, _Context(False, False), "fp32")
    assert metrics["val_accuracy"] == pytest.approx(single["accuracy"], abs=1e-12)
    assert metrics["val_loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_persistent_workers_see_each_epoch_and_every_sample_once(digits_shards):
    """Persistent loader workers keep their copy of the dataset: the epoch reaches them through
    shared memory, so each epoch is a new shuffle of every sample, the same as without them."""
    def epochs(persistent: bool) -> list[list[int]]:
        ds = open_split(digits_shards, "train", shuffle=True, seed=3, batch_size=32, cache_bytes=1 << 20)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=persistent)
        out = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            out.append([i for x, _ in loader for i in x.flatten(1).sum(1).tolist()])
        return out

    fresh, kept = epochs(False), epochs(True)
    assert kept == fresh  # same order, epoch after epoch
    assert kept[0] != kept[1] and sorted(kept[0]) == sorted(kept[1]) == sorted(kept[2])


def test_the_shard_cache_replays_the_stream_and_keeps_to_its_budget(digits_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(digits_shards, shards)

    def batches(ds, epoch):
        ds.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in torch.utils.data.DataLoader(ds, batch_size=None)]

    streamed = open_split(shards, "train", shuffle=True, seed=1, batch_size=50, augment=True)
    cached = open_split(shards, "train", shuffle=True, seed=1, batch_size=50, augment=True,
                          cache_bytes=1 << 30)
    budget = open_split(shards, "train", shuffle=True, seed=1, batch_size=50, cache_bytes=20_000)
    for epoch in range(3):
        want = batches(streamed, epoch)
        got = batches(cached, epoch)
        assert len(got) == len(want) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                             for a, b in zip(got, want))
        batches(budget, epoch)
    assert len(cached._cache) == len(cached.shards)  # everything in memory after the first epoch
    assert 0 < len(budget._cache) < len(budget.shards) and budget._cached_bytes <= 20_000
    # Cached shards are read from memory: with the files gone, a later epoch still reads them all.
    for f in shards.glob("train-*"):
        f.unlink()
    assert sum(len(y) for _, y in batches(cached, 3)) == cached.num_samples()
