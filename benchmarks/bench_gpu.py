"""GPU benchmark: the pipeline's training loop against a plain PyTorch loop on one GPU, bf16,
eager and compiled, in one table. Meant to fit in 8 minutes on one H100 (``--no-compile``: about 4).

Rows (samples/s, after warm-up; the Transformer also in target+source tokens/s):

- ResNet-50 at 224 x 224, 1000 classes, channels_last, fused SGD:
  - plain loop, synthetic batch resident on the GPU: the model's ceiling on this card;
  - plain loop fed by the project's shard reader (ImageNet-style JPEG shards written here,
    RandomResizedCrop + flip decoded in ``--loader-workers`` processes, uint8 to the GPU);
  - the pipeline's loop (``train_loop_per_worker``) on the same shards and reader settings.
  The last two differ only by the loop: their ratio is the pipeline's overhead.
- the Transformer and the diffusion U-Net of params.yaml on their embedded datasets:
  a plain loop over batches resident on the GPU, and the pipeline's loop on the shards.

    python benchmarks/bench_gpu.py                  # on a CUDA machine
    python benchmarks/bench_gpu.py --smoke          # seconds on a CPU: tiny sizes (a test runs it)

The pipeline's figures are the loop's own ``samples_per_s`` of its last epoch (training steps
only, as the plain loop's). Ray and MLflow are not needed: this is the loop Ray Train runs.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
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

from components.config import (
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    dataset_config,
    dataset_module,
    family_name,
    load_params,
    to_dict,
    train_config,
)
from components.data import images
from components.data.shards import ShardDataset
from components.models import resnet
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
                 loader: torch.utils.data.DataLoader | None = None, pixel_max: float = 255.0) -> float:
    """Images/s of a hand-written loop: on a resident synthetic batch, or fed by ``loader``."""
    torch.manual_seed(0)
    model = resnet.build(cfg.model).to(device).to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    opt = optim.build(model, cfg.optimizer, cfg.lr)
    n, s = cfg.batch_size, cfg.model.image_size
    synthetic = (torch.rand(n, 3, s, s, device=device).contiguous(memory_format=torch.channels_last),
                 torch.randint(0, cfg.model.num_classes, (n,), device=device))
    batches = iter(loader) if loader is not None else None
    seen, t0 = 0, 0.0
    for i in range(steps + 5):
        if i == 5:  # warm-up done (cuDNN autotuning, compilation)
            sync(device)
            t0 = time.perf_counter()
        if batches is None:
            x, y = synthetic
        else:
            x, y = next(batches)
            x = (x.to(device, non_blocking=True).float() / pixel_max).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
        with _autocast(cfg.precision, device):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y) if i >= 5 else 0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device: checks the script runs")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--images", type=int, default=20_000, help="JPEGs in the ResNet-50 shards")
    parser.add_argument("--loader-workers", type=int, default=14)
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each plain loop")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("error: no CUDA device; run this on a GPU machine, or pass --smoke to check the script")
    smoke = args.smoke
    n_images, size, crop, classes = (96, 48, 32, 4) if smoke else (args.images, 256, 224, 1000)
    steps, workers = (3, 2) if smoke else (args.steps, args.loader_workers)
    compiles = [False] if args.no_compile else [False, True]
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
          f"{' (smoke sizes)' if smoke else ''}", flush=True)
    rows: list[tuple[str, str, float, float]] = []

    def add(model: str, path: str, rate: float, tokens: float = math.nan) -> None:
        rows.append((model, path, rate, rate * tokens))
        print(f"  {model:<12}{path:<44}{rate:>12,.0f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        shards = jpeg_shards(root / "jpeg", n_images, size, crop, classes)
        print(f"ResNet-50 data: {n_images} JPEGs sharded in {time.perf_counter() - t0:.0f} s", flush=True)
        cfg = resnet50_config(smoke, classes, crop, device)
        cfg.loader_workers, cfg.loader_persistent, cfg.loader_prefetch = workers, True, 4
        cfg.data_cache_mb = 0  # an ImageNet-size set does not fit: stream as it would
        ds = ShardDataset(shards, "train", shuffle=True, batch_size=cfg.batch_size, augment=True, uint8_images=True)
        per_epoch = ds.num_batches()
        for compiled in compiles:
            tag = "compiled" if compiled else "eager"
            add("ResNet-50", f"plain, synthetic batch on the device, {tag}",
                plain_resnet(cfg, device, steps, compiled))
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=cfg.use_gpu,
                                                 persistent_workers=True, prefetch_factor=4)
            add("ResNet-50", f"plain, shard reader ({workers} workers), {tag}",
                plain_resnet(cfg, device, min(steps, per_epoch - 5), compiled, loader))
            cfg.compile = compiled
            add("ResNet-50", f"pipeline loop, same reader, {tag}",
                pipeline_rate("resnet", cfg, "resnet", shards, root / f"run-resnet-{tag}"))

        raw = load_params(REPO / "params.yaml")
        for algo in ("transformer", "diffusion"):
            name = raw["algorithms"][algo]["dataset"]
            dcfg, module = dataset_config(raw, name), dataset_module(raw, name)
            module.preprocess(dcfg, root / "raw" / name, root / "shards" / name, module.ingest(dcfg, root / "raw" / name))
            for compiled in compiles:
                tag = "compiled" if compiled else "eager"
                rate, tokens = plain_family(raw, algo, root / "shards" / name, device, steps, compiled)
                add(algo, f"plain, resident batch, {tag}", rate, tokens)
                if smoke:  # an epoch of these on a CPU takes minutes; the loop is the ResNet rows' one
                    continue
                cfg_a = train_config(raw, algo)
                cfg_a.epochs = 2
                cfg_a.use_gpu, cfg_a.compile, cfg_a.val_every = device.type == "cuda", compiled, 1000
                add(algo, f"pipeline loop, shards, {tag}",
                    pipeline_rate(algo, cfg_a, family_name(raw, algo), root / "shards" / name,
                                  root / f"run-{algo}-{tag}"), tokens)

    print(f"\n{'model':<12}{'path':<44}{'samples/s':>12}{'tokens/s':>12}")
    for model, path, rate, tok in rows:
        print(f"{model:<12}{path:<44}{rate:>12,.0f}{'' if math.isnan(tok) else f'{tok:,.0f}':>12}")
    by = {(m, p): r for m, p, r, _ in rows}
    for tag in ["eager"] + (["compiled"] if not args.no_compile else []):
        plain = by[("ResNet-50", f"plain, shard reader ({workers} workers), {tag}")]
        pipe = by[("ResNet-50", f"pipeline loop, same reader, {tag}")]
        print(f"ResNet-50 {tag}: pipeline / plain time per image {plain / pipe:.3f} (floor: <= 1.05)")


if __name__ == "__main__":
    main()
