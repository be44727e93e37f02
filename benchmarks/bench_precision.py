"""Benchmark: a training step in fp32, in bf16 through torch AMP (what the loop uses), and in bf16
through accelerate's ``Accelerator``, for each algorithm, on this machine's CPU or GPU.

It settles two questions with figures. (1) Does accelerate cost more than torch AMP? The loop's
mixed precision is ``torch.autocast`` (bf16 needs no loss scaling); ``Accelerator`` wraps the same
autocast plus its own model/optimizer wrappers, measured here on ResNet. (2) Is bf16 faster on
this CPU? ``precision: auto`` turns bf16 on for a CPU family only where the CPU multiplies bf16
natively (AMX or AVX-512 BF16) and the family sets ``CPU_BF16 = True`` from this table, with
the loss after ``--steps`` steps as the quick check that training still moves the same way.

    python benchmarks/bench_precision.py                     # resnet transformer vae diffusion
    python benchmarks/bench_precision.py --algos resnet --steps 50 --device cuda

Needs each algorithm's shards (`dvc repro`); a batch of them is reused for every step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import TrainConfig
from components.data.registry import open_split
from components.data.shards import read_stats
from components.models import get_family
from components.params import family_name, train_config
from components.training.loop import _autocast, cpu_has_native_bf16, speed_up
from components.training.steps import SupervisedStep


def family_batch(raw: dict, algo: str, device: torch.device, shards: Path | None = None):
    """(train config bound to the data, family, one training batch on ``device``) of ``algo``;
    ``shards`` defaults to the repository's ``data/shards/<dataset>``."""
    cfg = train_config(raw, algo)
    shards = shards or REPO / "data/shards" / raw["algorithms"][algo]["dataset"]
    family = get_family(family_name(raw, algo))
    cfg.model = family.bind(cfg.model, read_stats(shards), shards)
    options = family.loader_options(cfg.model, 1) if hasattr(family, "loader_options") else {}
    ds = open_split(shards, "train", batch_size=cfg.batch_size, uint8_images=True, **options)
    batch = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in next(iter(ds)))
    batch = ds.batcher.on_device(batch)
    return cfg, family, batch


def time_steps(raw: dict, algo: str, precision: str, steps: int, device: torch.device, *,
               shards: Path | None = None, compile: bool = False, warmup: int = 2) -> tuple[float, float, tuple]:
    """(ms per step after ``warmup`` steps, loss of the last step, the batch) of the loop's own
    Step on one batch resident on ``device`` (``compile``: as ``train.<algo>.compile``)."""
    cfg, family, batch = family_batch(raw, algo, device, shards)
    torch.manual_seed(0)
    model = family.build(cfg.model).to(device)
    speed_up(model, family, TrainConfig(compile=compile))
    step = getattr(family, "Step", SupervisedStep)(model, cfg, family, steps + warmup,
                                                   lambda: _autocast(precision, device))
    out, t0 = None, 0.0
    for i in range(steps + warmup):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        out = step(batch, i)
    sync(device)
    return (time.perf_counter() - t0) / steps * 1000, float(out.loss), batch


def time_accelerate(raw: dict, algo: str, steps: int, device: torch.device) -> tuple[float, float]:
    """The same supervised step written the accelerate way: prepare, autocast, accelerator.backward."""
    from accelerate import Accelerator

    from components.training import optim, schedules

    cfg, family, batch = family_batch(raw, algo, device)
    torch.manual_seed(0)
    accelerator = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
    model = family.build(cfg.model)
    opt = optim.build(model, cfg.optimizer, cfg.lr)
    model, opt = accelerator.prepare(model, opt)
    lr_at = schedules.build(cfg.schedule, cfg.lr, steps + 2)
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            t0 = time.perf_counter()
        optim.set_lr(opt, lr_at(i))
        with accelerator.autocast():
            out = family.training_step(model, batch, cfg.model, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(out["loss"])
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    sync(device)
    return (time.perf_counter() - t0) / steps * 1000, float(out["loss"].detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["resnet", "transformer", "vae", "diffusion"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    device = torch.device(args.device)
    print(f"{device}: {torch.cuda.get_device_name() if device.type == 'cuda' else torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 matmul: {cpu_has_native_bf16() if device.type == 'cpu' else 'yes'}, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps")
    print(f"{'algorithm':<13}{'fp32 ms':>9}{'bf16 ms':>9}{'speed-up':>10}{'accelerate ms':>15}"
          f"{'loss fp32':>11}{'loss bf16':>11}")
    for algo in args.algos:
        fp32, loss32, _ = time_steps(raw, algo, "fp32", args.steps, device)
        bf16, loss16, _ = time_steps(raw, algo, "bf16", args.steps, device)
        acc = ""
        if algo == "resnet":
            try:
                acc = f"{time_accelerate(raw, algo, args.steps, device)[0]:.1f}"
            except ImportError:  # no longer a dependency: `pip install accelerate` to measure it
                acc = "n/a"
        print(f"{algo:<13}{fp32:>9.1f}{bf16:>9.1f}{fp32 / bf16:>9.2f}x{acc:>15}{loss32:>11.4f}{loss16:>11.4f}",
              flush=True)


if __name__ == "__main__":
    main()
