"""Benchmark: the same ResNet epochs four ways, to price what the pipeline adds to plain PyTorch.

    (a) a plain single-process PyTorch loop over in-memory tensors;
    (b) the pipeline's train path in Ray Train's local mode (the default, ``num_workers: 0``):
        shards, MLflow logging, epoch checkpoints, progress;
    (c) the pipeline's train path as a Ray Train DDP job of ``--workers`` workers;
    (d) plain ``torch.distributed`` DDP over the same number of processes (gloo, one thread
        each as in (c)), same model, optimizer, schedule, per-rank batch, rank split of the
        data and per-epoch validation, with no Ray, no shards and no logging.

Each path records when every epoch ends. "In-loop" is the time from the end of the first epoch
to the end of the last (every path's steady state, validation and per-epoch hand-offs
included); "fixed" is the rest of the wall time: imports, start-up (Ray, the worker group,
the process group) and the first epoch's warm-up. The ratios (b)/(a) and (c)/(d) compare
in-loop times.

    python benchmarks/bench_train.py --epochs 100      # about 60 s of in-loop time per path on 2 cores

Needs the digits shards (`dvc repro preprocess-digits`). Run nothing else meanwhile: PyTorch
threads from two processes sharing 2 cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import to_dict
from components.data import transforms
from components.data.registry import open_split
from components.data.shards import read_stats
from components.models import resnet
from components.params import train_config, train_config_from_dict
from components.training import launch, optim, schedules


def _in_memory(shard_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    (x, y), = open_split(shard_dir, split, batch_size=1_000_000, uint8_images=True)
    return transforms.scale((x, y), read_stats(shard_dir)["image"]["pixel_max"])


class EpochClock:
    """A loop hook that appends the wall-clock time at the end of every epoch to a file (rank 0)."""

    all_ranks = False

    def __init__(self, path: Path):
        self.path = str(path)

    def on_step(self, rows):
        pass

    def on_epoch(self, metrics, checkpoint_dir):
        with open(self.path, "a") as f:
            f.write(f"{time.time()}\n")


def _split(t0: float, t_end: float, clock: Path) -> tuple[float, float, float]:
    """(wall, in-loop, fixed) from the start, the end and the per-epoch end times."""
    ends = [float(x) for x in clock.read_text().split()]
    in_loop = ends[-1] - ends[0]
    wall = t_end - t0
    return wall, in_loop, wall - in_loop


def plain_epochs(model, cfg, data, val, *, rank: int = 0, world_size: int = 1, clock: Path | None = None,
                 seed: int = 0) -> float:
    """``cfg.epochs`` epochs of a hand-written loop on this rank's share; returns the last val accuracy."""
    (x, y), (xv, yv) = data, val
    x, y, xv, yv = x[rank::world_size], y[rank::world_size], xv[rank::world_size], yv[rank::world_size]
    opt = optim.build(model, cfg.optimizer, cfg.lr)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    lr_at = schedules.build(cfg.schedule, cfg.lr, steps_per_epoch * cfg.epochs)
    step, acc = 0, 0.0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + epoch * 10 + rank))
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            optim.set_lr(opt, lr_at(step))
            loss = F.cross_entropy(model(resnet.random_shift(x[idx], 1)), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            counts = torch.tensor([(model(xv).argmax(1) == yv).sum().item(), len(yv)], dtype=torch.float64)
        if world_size > 1:
            torch.distributed.all_reduce(counts)
        acc = (counts[0] / counts[1]).item()
        if clock is not None and rank == 0:
            with open(clock, "a") as f:
                f.write(f"{time.time()}\n")
    return acc


def _model(cfg, shard_dir: Path):
    torch.manual_seed(cfg.seed)
    return resnet.build(resnet.bind(copy.deepcopy(cfg.model), read_stats(shard_dir), shard_dir))


def plain_loop(cfg, shard_dir: Path, scratch: Path) -> tuple[float, float, float, float]:
    """(a): returns (wall, in-loop, fixed, val accuracy)."""
    t0, clock = time.time(), scratch / f"clock-a-{time.time_ns()}"
    acc = plain_epochs(_model(cfg, shard_dir), cfg, _in_memory(shard_dir, "train"), _in_memory(shard_dir, "val"),
                       clock=clock, seed=cfg.seed)
    return (*_split(t0, time.time(), clock), acc)


def _ddp_worker(rank: int, world_size: int, port: int, train: dict, shard_dir: str, clock: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # as the pipeline's DDP workers on a shared machine
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = train_config_from_dict("resnet", train)
        model = torch.nn.parallel.DistributedDataParallel(_model(cfg, Path(shard_dir)))
        acc = plain_epochs(model, cfg, _in_memory(Path(shard_dir), "train"), _in_memory(Path(shard_dir), "val"),
                           rank=rank, world_size=world_size, clock=Path(clock), seed=cfg.seed)
        if rank == 0:
            Path(result).write_text(json.dumps({"val_accuracy": acc}))
    finally:
        torch.distributed.destroy_process_group()


def plain_ddp(cfg, shard_dir: Path, scratch: Path, world_size: int) -> tuple[float, float, float, float]:
    """(d): plain torch.distributed DDP in ``world_size`` processes; returns (wall, in-loop, fixed, val accuracy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock, result = scratch / f"clock-d-{time.time_ns()}", scratch / "result-d.json"
    t0 = time.time()
    torch.multiprocessing.spawn(_ddp_worker, args=(world_size, port, to_dict(cfg), str(shard_dir), str(clock),
                                                   str(result)), nprocs=world_size)
    return (*_split(t0, time.time(), clock), json.loads(result.read_text())["val_accuracy"])


def pipeline_path(cfg, shard_dir: Path, num_workers: int, scratch: Path,
                  mlflow: bool = True, dashboard: bool = True) -> tuple[float, float, float, float]:
    """(b) and (c): launch.fit as the train stage calls it: Ray Train, MLflow logging (unless
    ``mlflow`` is false: a machine without it), epoch checkpoints. ``dashboard=False`` starts the
    local Ray without its dashboard (a machine without ray[default]'s packages; a lone Train run
    that no Tune trial stops needs none)."""
    hooks = []
    if mlflow:
        from components import tracking

        uri = tracking.configure(scratch)
        client = tracking.MlflowClient()
        run = client.create_run(tracking.experiment_id("bench", scratch), run_name=f"workers-{num_workers}")
        hooks.append(tracking.MlflowHook(uri, run.info.run_id))
    tag = f"{num_workers}-{time.time_ns()}"  # a fresh run directory: a second call must not resume the first
    clock = scratch / f"clock-{tag}"
    t0 = time.time()
    if not dashboard:
        launch.init_ray(0, dashboard=False)  # fit then finds it started
    metrics = launch.fit({"algo": "resnet", "train": {**to_dict(cfg), "num_workers": num_workers},
                          "data_dir": str(shard_dir), "run_dir": str(scratch / f"run-{tag}"),
                          "hooks": [*hooks, launch.RayTrainReport(cfg.checkpoint_every, cfg.epochs),
                                    EpochClock(clock)]},
                         num_workers=num_workers, use_gpu=False, storage_path=str(scratch / "ray"),
                         name=f"bench-{tag}")
    t_end = time.time()
    if mlflow:
        client.set_terminated(run.info.run_id)
    return (*_split(t0, t_end, clock), metrics["val_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="processes of (c) and (d)")
    parser.add_argument("--paths", default="abcd", help="which paths to run, in order, e.g. cd; "
                        "a path named more than once reports its median run (abcdabcdabcd)")
    parser.add_argument("--shards", default=str(REPO / "data/shards/digits"))
    parser.add_argument("--no-mlflow", action="store_true", help="(b) and (c) without the MLflow hook "
                        "(a machine without mlflow installed); the report says so")
    parser.add_argument("--no-dashboard", action="store_true", help="(c)'s local Ray without its dashboard "
                        "(a machine without ray[default]'s packages)")
    args = parser.parse_args()
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = train_config(raw, "resnet")
    cfg.epochs = args.epochs
    shard_dir = Path(args.shards)
    names = {"a": "(a) plain PyTorch loop", "b": "(b) pipeline, local mode",
             "c": f"(c) pipeline, {args.workers} Ray DDP workers", "d": f"(d) plain DDP, {args.workers} processes"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        print(f"ResNet-{cfg.model.depth} on digits, {cfg.epochs} epochs, batch {cfg.batch_size} per process, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores"
              f"{', no MLflow hook' if args.no_mlflow else ''}{', no Ray dashboard' if args.no_dashboard else ''}",
              flush=True)
        for p in args.paths:
            run = {"a": lambda: plain_loop(cfg, shard_dir, scratch),
                   "b": lambda: pipeline_path(cfg, shard_dir, 0, scratch, not args.no_mlflow),
                   "c": lambda: pipeline_path(cfg, shard_dir, args.workers, scratch, not args.no_mlflow,
                                               not args.no_dashboard),
                   "d": lambda: plain_ddp(cfg, shard_dir, scratch, args.workers)}[p]
            results.setdefault(p, []).append(run())
            print(f"  {names[p]}: val_accuracy {results[p][-1][3]:.4f}, in-loop {results[p][-1][1]:.1f} s", flush=True)
    # A path named several times (--paths abab) reports its median in-loop run: runs on a shared
    # machine vary by several per cent from one to the next, and drift over minutes (the same
    # path 10% slower ten minutes later), so a ratio is also taken pair by pair: run i of one
    # path against run i of the other, next to it in time, and the median of those is printed.
    medians = {p: sorted(runs, key=lambda r: r[1])[len(runs) // 2] for p, runs in results.items()}
    print(f"\n{'path':<36}{'wall s':>8}{'in-loop s':>11}{'fixed s':>9}{'val acc':>9}")
    for p, (wall, in_loop, fixed, acc) in medians.items():
        print(f"{names[p]:<36}{wall:>8.1f}{in_loop:>11.1f}{fixed:>9.1f}{acc:>9.4f}")
    for num, den in (("b", "a"), ("c", "d")):
        if num in results and den in results:
            ratio = medians[num][1] / medians[den][1]
            pairs = sorted(n[1] / d[1] for n, d in zip(results[num], results[den]))
            paired = (f"; paired runs {', '.join(f'{r:.3f}' for r in pairs)}, median {pairs[len(pairs) // 2]:.3f}"
                      if len(pairs) > 1 else "")
            print(f"in-loop {names[num][:3]}/{names[den][:3]}: {ratio:.3f} (median runs){paired}")


if __name__ == "__main__":
    main()
