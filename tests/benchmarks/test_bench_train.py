"""The training benchmark's reference paths run, so that its figures cannot rot: (a) the plain
loop and (d) plain torch.distributed DDP in two processes, on the real digits shards."""

import sys
from pathlib import Path

import pytest

from components.config import OptimizerConfig, ScheduleConfig, TrainConfig
from components.models import resnet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_train


def config(epochs: int) -> TrainConfig:
    cfg = TrainConfig(lr=0.05, epochs=epochs, batch_size=64, grad_clip=5.0, label_smoothing=0.1,
                      optimizer=OptimizerConfig(), schedule=ScheduleConfig(name="cosine", warmup=0.1))
    cfg.model = resnet.Config(depth=8)
    return cfg


@pytest.mark.parametrize("path", ["a", "d"])
def test_a_plain_reference_path_trains_and_times_its_epochs(path, digits_shards, tmp_path):
    cfg = config(3)
    if path == "a":
        wall, in_loop, fixed, acc = bench_train.plain_loop(cfg, digits_shards, tmp_path)
    else:
        wall, in_loop, fixed, acc = bench_train.plain_ddp(cfg, digits_shards, tmp_path, world_size=2)
    assert acc > 0.3  # far above chance (0.1) after 3 tiny epochs: the model learned on both ranks' data
    assert 0 < in_loop < wall and fixed == pytest.approx(wall - in_loop)
    clock = next(tmp_path.glob(f"clock-{path}-*"))
    assert len(clock.read_text().split()) == 3  # rank 0 timed every epoch once
