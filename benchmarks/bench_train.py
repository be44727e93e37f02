"""Benchmark: the same ResNet epochs (a) in a plain PyTorch loop, (b) through the pipeline's
train path with the default worker setting, (c) as a 2-worker DDP job. Prints wall times,
ratios to (a), and the time each path spends outside its epochs (start-up, and for
Ray Train the per-epoch report + checkpoint hand-off).

    python benchmarks/bench_train.py --epochs 200      # ~60 s per path on 2 cores

Needs the digits shards (`dvc repro preprocess-digits`). Run nothing else meanwhile:
PyTorch threads from two processes sharing 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from components import tracking
from components.config import to_dict, train_config
from components.data.shards import ShardDataset, read_stats
from components.models import resnet
from components.training import launch, optim, schedules

REPO = Path(__file__).resolve().parents[1]


def plain_loop(cfg, shard_dir: Path) -> tuple[float, float]:
    """A hand-written loop over in-memory tensors: no Ray, no shards per epoch, no logging."""
    t0 = time.perf_counter()
    train = list(ShardDataset(shard_dir, "train", batch_size=10_000))
    val = list(ShardDataset(shard_dir, "val", batch_size=10_000))
    (x, y), (xv, yv) = train[0], val[0]
    torch.manual_seed(cfg.seed)
    model = resnet.build(resnet.bind(copy.deepcopy(cfg.model), read_stats(shard_dir), shard_dir))
    opt = optim.build(model, cfg.optimizer, cfg.lr)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    lr_at = schedules.build(cfg.schedule, cfg.lr, steps_per_epoch * cfg.epochs)
    step, in_epochs = 0, 0.0
    for _ in range(cfg.epochs):
        e0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            optim.set_lr(opt, lr_at(step))
            loss = F.cross_entropy(model(resnet.random_shift(x[idx], 1)), y[idx],
                                   label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            val_acc = (model(xv).argmax(1) == yv).float().mean().item()
        in_epochs += time.perf_counter() - e0
    wall = time.perf_counter() - t0
    print(f"  (a) plain loop: val_accuracy {val_acc:.4f}")
    return wall, wall - in_epochs


class EpochTimer:
    all_ranks = False

    def __init__(self):
        self.total = 0.0

    def on_step(self, rows):
        pass

    def on_epoch(self, metrics, checkpoint_dir):
        self.total += metrics["epoch_time_s"]


def pipeline_path(cfg, shard_dir: Path, num_workers: int, scratch: Path) -> tuple[float, float]:
    """launch.fit as the train stage calls it: Ray Train, MLflow logging, epoch checkpoints."""
    uri = tracking.configure(scratch)
    client = tracking.MlflowClient()
    run = client.create_run(tracking.experiment_id("bench", scratch), run_name=f"workers-{num_workers}")
    timer = EpochTimer()
    t0 = time.perf_counter()
    metrics = launch.fit({"algo": "resnet", "train": {**to_dict(cfg), "num_workers": num_workers},
                          "data_dir": str(shard_dir), "run_dir": str(scratch / f"run-{num_workers}"),
                          "hooks": [tracking.MlflowHook(uri, run.info.run_id), launch.RayTrainReport(), timer]},
                         num_workers=num_workers, use_gpu=False, storage_path=str(scratch / "ray"),
                         name=f"bench-{num_workers}")
    wall = time.perf_counter() - t0
    client.set_terminated(run.info.run_id)
    print(f"  ({'b' if num_workers == 0 else 'c'}) {num_workers} workers: val_accuracy {metrics['val_accuracy']:.4f}")
    # With DDP the timer runs in a worker process; fall back to the reported per-epoch time x epochs.
    in_epochs = timer.total or metrics["epoch_time_s"] * cfg.epochs
    return wall, wall - in_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--shards", default=str(REPO / "data/shards/digits"))
    args = parser.parse_args()
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = train_config(raw, "resnet")
    cfg.epochs = args.epochs
    shard_dir = Path(args.shards)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        print(f"ResNet-{cfg.model.depth} on digits, {cfg.epochs} epochs, batch {cfg.batch_size}, "
              f"{torch.get_num_threads()} threads")
        a, a_fixed = plain_loop(cfg, shard_dir)
        b, b_fixed = pipeline_path(cfg, shard_dir, 0, scratch)
        c, c_fixed = pipeline_path(cfg, shard_dir, 2, scratch)
    print(f"\n{'path':<34}{'wall s':>9}{'ratio to (a)':>14}{'outside epochs s':>18}")
    print(f"{'(a) plain PyTorch loop':<34}{a:>9.1f}{1.0:>14.3f}{a_fixed:>18.1f}")
    print(f"{'(b) pipeline, default (local mode)':<34}{b:>9.1f}{b / a:>14.3f}{b_fixed:>18.1f}")
    print(f"{'(c) pipeline, 2 DDP workers':<34}{c:>9.1f}{c / a:>14.3f}{c_fixed:>18.1f}")


if __name__ == "__main__":
    main()
