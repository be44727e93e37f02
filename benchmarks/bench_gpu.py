"""GPU benchmark: the pipeline's training loop against a plain PyTorch loop on one GPU, bf16,
eager and compiled, in one table. The eager rows take about 3 minutes on an H200, the compiled
ones about 5; ``benchmarks/gpu_session.sh`` runs them as a device session's two calls.

Rows (samples/s, after warm-up; the Transformer also in target+source tokens/s):

- ResNet-50 at 224 x 224, 1000 classes, channels_last, fused SGD:
  - plain loop, synthetic batch resident on the GPU: the model's ceiling on this card; in eager
    mode also with each speed option turned off in turn (channels_last, fused SGD) and written
    with accelerate's Accelerator instead of torch AMP (where accelerate is installed);
  - plain loop fed by the project's shard reader (ImageNet-style JPEG shards written here,
    RandomResizedCrop + flip decoded in ``--loader-workers`` processes, uint8 to the GPU), timed
    over its second epoch; in eager mode also without pinned memory and without persistent workers;
  - the pipeline's loop (``train_loop_per_worker``) on the same shards and reader settings.
  The last two differ only by the loop: their ratio is the pipeline's overhead.
- the Transformer and the diffusion U-Net of params.yaml on their embedded datasets:
  a plain loop over batches resident on the GPU, and the pipeline's loop on the shards.

    python benchmarks/bench_gpu.py                  # on a CUDA machine
    python benchmarks/bench_gpu.py --smoke          # seconds on a CPU: tiny sizes (a test runs it)

The pipeline's figures are the loop's own ``samples_per_s`` of its last epoch (training steps
only, timed until the device has finished, as the plain loop's). Ray and MLflow are not needed:
this is the loop Ray Train runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_precision import (  # the family step timed on a resident batch (same folder)
    sync,
    time_steps,
)

from components.config import OptimizerConfig, ScheduleConfig, TrainConfig, to_dict
from components.data import images
from components.data.registry import open_split
from components.models import resnet
from components.params import (
    dataset_config,
    dataset_module,
    family_name,
    load_params,
    train_config,
)
from components.training import optim
from components.training.loop import _autocast, train_loop_per_worker


class LastEpoch:
    def __init__(self) -> None:
        self.metrics: dict = {}

    def on_step(self, rows) -> None:
        pass

    def on_epoch(self, metrics, checkpoint_dir) -> None:
        self.metrics = dict(metrics)


def _write_jpegs(args: tuple[Path, range, int, int]) -> None:
    from PIL import Image

    root, indices, size, classes = args
    rng = np.random.default_rng(indices.start)
    for i in indices:
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth content: JPEG sizes like photos'
        img = Image.fromarray(low).resize((size, size * 3 // 4 if i % 2 else size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (root / f"class{i % classes:03d}" / f"{i:06d}.jpg").write_bytes(buf.getvalue())


def write_jpeg_folder(root: Path, n: int, size: int, classes: int) -> Path:
    """An ImageFolder of ``n`` JPEGs (``size`` px wide, quality 90), written by every core."""
    import multiprocessing as mp

    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    cores = max(1, min(16, mp.cpu_count()))
    chunks = [(root, range(i, min(n, i + 500), 1), size, classes) for i in range(0, n, 500)]
    with mp.get_context("fork").Pool(cores) as pool:
        pool.map(_write_jpegs, chunks)
    return root


def jpeg_shards(root: Path, n: int, size: int, crop: int, classes: int) -> Path:
    """The folder above through the project's ingest and preprocess (bytes passed through)."""
    cfg = images.Config(source="imagefolder", path=str(write_jpeg_folder(root / "folder", n, size, classes)),
                        val_fraction=0.02, test_fraction=0.02, samples_per_shard=max(16, n // 64), fit_evaluator=False,
                        augment=images.AugmentConfig(style="imagenet", size=crop))
    manifest = images.ingest(cfg, root / "raw")
    images.preprocess(cfg, root / "raw", root / "shards", manifest)
    return root / "shards"


def resnet50_config(smoke: bool, classes: int, crop: int, device: torch.device) -> TrainConfig:
    cuda = device.type == "cuda"
    cfg = TrainConfig(lr=0.1, epochs=2, batch_size=8 if smoke else 256, precision="bf16" if cuda else "fp32",
                      use_gpu=cuda,
                      channels_last=True, label_smoothing=0.1, log_every=50,
                      optimizer=OptimizerConfig(name="sgd", weight_decay=5e-5, implementation="fused"),
                      schedule=ScheduleConfig(name="cosine", warmup=0.05))
    cfg.model = resnet.Config(depth=50, style="imagenet", in_channels=3, num_classes=classes, image_size=crop,
                              normalize=False)
    return cfg


def plain_resnet(cfg: TrainConfig, device: torch.device, steps: int, compile: bool,
                 loader: torch.utils.data.DataLoader | None = None, pixel_max: float = 255.0, *,
                 channels_last: bool = True, implementation: str = "fused", accelerate: bool = False) -> float:
    """Images/s of a hand-written loop: ``steps`` steps on a resident synthetic batch after 5 of
    warm-up, or fed by ``loader``: its second epoch, from ``iter()`` until the device has finished,
    which is how the pipeline's loop times an epoch. ``accelerate``: the same loop written the
    Accelerator way (prepare, its autocast, its backward)."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = resnet.build(cfg.model).to(device).to(memory_format=layout)
    if compile:
        model.compile()
    opt = optim.build(model, replace(cfg.optimizer, implementation=implementation), cfg.lr)
    autocast, backward = (lambda: _autocast(cfg.precision, device)), (lambda loss: loss.backward())
    if accelerate:
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision="bf16" if device.type == "cuda" else "no", cpu=device.type == "cpu")
        model, opt = acc.prepare(model, opt)
        autocast, backward = acc.autocast, acc.backward

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        backward(loss)
        opt.step()

    if loader is None:
        n, s = cfg.batch_size, cfg.model.image_size
        x = torch.rand(n, 3, s, s, device=device).contiguous(memory_format=layout)
        y = torch.randint(0, cfg.model.num_classes, (n,), device=device)
        for i in range(steps + 5):
            if i == 5:  # warm-up done (cuDNN autotuning, compilation)
                sync(device)
                t0 = time.perf_counter()
            step(x, y)
        sync(device)
        return steps * n / (time.perf_counter() - t0)
    for epoch in range(2):  # the first warms up: workers, cuDNN autotuning, compilation
        sync(device)
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x = (x.to(device, non_blocking=True).float() / pixel_max).contiguous(memory_format=layout)
            step(x, y.to(device, non_blocking=True))
            seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - t0)


def pipeline_rate(algo: str, cfg: TrainConfig, family: str, shards: Path, run_dir: Path) -> float:
    """Samples/s of the pipeline's loop in its last epoch (training steps only)."""
    hook = LastEpoch()
    train_loop_per_worker({"algo": algo, "family": family, "train": to_dict(cfg), "data_dir": str(shards),
                           "run_dir": str(run_dir), "hooks": [hook]})
    return hook.metrics["samples_per_s"]


def plain_family(raw: dict, algo: str, shards: Path, device: torch.device, steps: int,
                 compile: bool) -> tuple[float, float]:
    """(samples/s, tokens per sample) of a plain loop of the family's own step on a resident batch."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    ms, _, batch = time_steps(raw, algo, precision, steps, device, shards=shards, compile=compile, warmup=5)
    tokens = float(sum((t != 0).sum() for t in batch[:2])) / len(batch[-1]) if algo == "transformer" else math.nan
    return len(batch[-1]) / (ms / 1000), tokens


SMOKE_DATA = {"num_train": 400, "num_val": 50, "num_test": 50}


def prepare(root: Path, args: argparse.Namespace, smoke: bool, raw: dict) -> dict[str, Path]:
    """Every data set the rows read, written once under ``root`` (kept there for a second call)."""
    n_images, size, crop, classes = (96, 48, 32, 4) if smoke else (args.images, 256, 224, 1000)
    done, out = root / "ready", {"resnet50": root / "jpeg" / "shards"}
    for algo in ("transformer", "diffusion"):
        out[algo] = root / "shards" / raw["algorithms"][algo]["dataset"]
    if done.exists():
        print(f"data: reused from {root}", flush=True)
        return out
    t0 = time.perf_counter()
    jpeg_shards(root / "jpeg", n_images, size, crop, classes)
    print(f"ResNet-50 data: {n_images} JPEGs sharded in {time.perf_counter() - t0:.0f} s", flush=True)
    for algo in ("transformer", "diffusion"):
        name = raw["algorithms"][algo]["dataset"]
        dcfg, module = dataset_config(raw, name), dataset_module(raw, name)
        if smoke:  # a resident batch is all the rows read: a few hundred pairs, an evaluator of one epoch
            dcfg = replace(dcfg, **{k: v for k, v in SMOKE_DATA.items() if hasattr(dcfg, k)})
            if hasattr(dcfg, "evaluator"):
                dcfg = replace(dcfg, evaluator=replace(dcfg.evaluator, epochs=1))
        if not out[algo].exists():
            module.preprocess(dcfg, root / "raw" / name, out[algo], module.ingest(dcfg, root / "raw" / name))
    done.touch()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device: checks the script runs")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"],
                        help="eager rows first, then compiled (torch.compile) rows")
    parser.add_argument("--no-compile", action="store_true", help="the eager rows only (= --modes eager)")
    parser.add_argument("--no-ablations", action="store_true",
                        help="skip the eager rows that turn one speed option off (or use accelerate) each")
    parser.add_argument("--images", type=int, default=20_000, help="JPEGs in the ResNet-50 shards")
    parser.add_argument("--loader-workers", type=int, default=14)
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each resident-batch loop")
    parser.add_argument("--workdir", type=Path, help="keep the written data here and reuse it on the next call")
    parser.add_argument("--prepare-only", action="store_true", help="write the data into --workdir, then stop")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.prepare_only and not args.workdir:
        parser.error("--prepare-only needs --workdir")
    if device.type != "cuda" and not args.smoke and not args.prepare_only:
        raise SystemExit("error: no CUDA device; run this on a GPU machine, or pass --smoke to check the script")
    smoke = args.smoke
    modes = ["eager"] if args.no_compile else args.modes
    crop, classes = (32, 4) if smoke else (224, 1000)
    steps, workers = (3, 2) if smoke else (args.steps, args.loader_workers)
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
          f"{' (smoke sizes)' if smoke else ''}", flush=True)
    rows: list[tuple[str, str, float, float]] = []

    def add(model: str, path: str, rate: float, tokens: float = math.nan) -> None:
        rows.append((model, path, rate, rate * tokens))
        print(f"  {model:<12}{path:<50}{rate:>12,.0f}", flush=True)

    def table() -> None:
        print(f"\n{'model':<12}{'path':<50}{'samples/s':>12}{'tokens/s':>12}")
        for model, path, rate, tok in rows:
            print(f"{model:<12}{path:<50}{rate:>12,.0f}{'' if math.isnan(tok) else f'{tok:,.0f}':>12}")
        by = {(m, p): r for m, p, r, _ in rows}
        for tag in modes:
            plain = by.get(("ResNet-50", f"plain, shard reader ({workers} workers), {tag}"))
            pipe = by.get(("ResNet-50", f"pipeline loop, same reader, {tag}"))
            if plain and pipe:
                print(f"ResNet-50 {tag}: pipeline / plain time per image {plain / pipe:.3f} (floor: <= 1.05)")
        print(flush=True)

    raw = load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(args.workdir or Path(tmp), args, smoke, raw)
        if args.prepare_only:
            return
        cfg = resnet50_config(smoke, classes, crop, device)
        cfg.loader_workers, cfg.loader_persistent, cfg.loader_prefetch = workers, True, 4
        cfg.data_cache_mb = 0  # an ImageNet-size set does not fit: stream as it would
        ds = open_split(data["resnet50"], "train", shuffle=True, batch_size=cfg.batch_size, augment=True,
                          uint8_images=True)

        def reader(pin: bool = cfg.use_gpu, persistent: bool = True) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin,
                                               persistent_workers=persistent, prefetch_factor=4)

        for tag in modes:
            compiled = tag == "compiled"
            add("ResNet-50", f"plain, synthetic batch on the device, {tag}", plain_resnet(cfg, device, steps, compiled))
            ablate = tag == "eager" and not args.no_ablations
            if ablate:
                add("ResNet-50", "  same, contiguous (not channels_last)",
                    plain_resnet(cfg, device, steps, False, channels_last=False))
                add("ResNet-50", "  same, foreach SGD (not fused)",
                    plain_resnet(cfg, device, steps, False, implementation="foreach"))
                if importlib.util.find_spec("accelerate"):  # not a dependency: the loop uses torch AMP
                    add("ResNet-50", "  same, through accelerate's Accelerator",
                        plain_resnet(cfg, device, steps, False, accelerate=True))
            add("ResNet-50", f"plain, shard reader ({workers} workers), {tag}",
                plain_resnet(cfg, device, steps, compiled, reader()))
            if ablate:
                if cfg.use_gpu:
                    add("ResNet-50", "  same, pageable memory (no pin_memory)",
                        plain_resnet(cfg, device, steps, False, reader(pin=False)))
                add("ResNet-50", "  same, workers restarted each epoch",
                    plain_resnet(cfg, device, steps, False, reader(persistent=False)))
            cfg.compile = compiled
            add("ResNet-50", f"pipeline loop, same reader, {tag}",
                pipeline_rate("resnet", cfg, "resnet", data["resnet50"], Path(tmp) / f"run-resnet-{tag}"))
            for algo in ("transformer", "diffusion"):
                rate, tokens = plain_family(raw, algo, data[algo], device, steps, compiled)
                add(algo, f"plain, resident batch, {tag}", rate, tokens)
                if smoke:  # an epoch of these on a CPU takes minutes; the loop is the ResNet rows' one
                    continue
                cfg_a = train_config(raw, algo)
                cfg_a.epochs = 2
                cfg_a.use_gpu, cfg_a.compile, cfg_a.val_every = device.type == "cuda", compiled, 1000
                add(algo, f"pipeline loop, shards, {tag}",
                    pipeline_rate(algo, cfg_a, family_name(raw, algo), data[algo], Path(tmp) / f"run-{algo}-{tag}"),
                    tokens)
            table()


if __name__ == "__main__":
    main()
