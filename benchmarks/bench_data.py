"""The image data path at real size: preprocess time, shard bytes, reader throughput, worker memory.

Writes, under a temporary folder (or ``--keep DIR``):

- a synthetic CIFAR-10 folder in the real python-pickle format, 50,000 + 10,000 images of
  32x32x3 with image-like structure (smooth random colour fields with shapes drawn on them,
  so that encoders behave as on photos rather than on white noise);
- a synthetic image folder of 2,000 JPEGs around 400x350 in 10 class folders;

then runs ingest and preprocess on each (``components/data/images.py``) and prints:

1. preprocess wall time, and shard bytes per sample beside the source's bytes per sample;
2. the pixel-array encoding choice: raw uint8 ``npy`` in a gzipped tar against PNG, bytes and
   decode time per image;
3. reader throughput in samples/s with 0 and 2 loader workers, decode and augmentation
   included (CIFAR style on CIFAR; ImageNet style, RandomResizedCrop(224) + flip, on the JPEGs);
4. the peak RSS of a process reading 10,000 and 50,000 samples (what one loader worker holds);
5. ResNet-20's (CIFAR style) training consumption in samples/s on this machine, and the
   reader's margin over it.

    python benchmarks/bench_data.py [--keep DIR] [--cifar-train 50000] [--jpegs 2000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import parse
from components.data import images
from components.data.registry import open_split
from components.data.shards import load_npy, read_stats


def image_like(n: int, size: int, seed: int) -> np.ndarray:
    """(n, 3, size, size) uint8: a smooth colour field (bilinear from 4x4 noise) with a filled
    rectangle and a disc of random colours on it, and a little sensor noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for start in range(0, n, 2048):
        m = min(2048, n - start)
        low = torch.from_numpy(rng.uniform(0, 255, (m, 3, 4, 4)).astype(np.float32))
        x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).numpy()
        for i in range(m):
            x0, y0 = rng.integers(0, size // 2, 2)
            w, h = rng.integers(size // 6, size // 2, 2)
            x[i, :, y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, (3, 1, 1))
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 10, size / 4)
            x[i][:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, (3, 1))
        x += rng.normal(0, 3, x.shape)
        out[start:start + m] = np.clip(x, 0, 255).round()
    return out


def write_cifar(root: Path, n_train: int, n_test: int) -> int:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per = n_train // 5
    for i, (name, n) in enumerate([*((f"data_batch_{b}", per) for b in range(1, 6)), ("test_batch", n_test)]):
        x = image_like(n, 32, i)
        labels = np.random.default_rng(100 + i).integers(0, 10, n).tolist()
        (folder / name).write_bytes(pickle.dumps({b"data": x.reshape(n, -1), b"labels": labels,
                                                  b"batch_label": name.encode()}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                "horse", "ship", "truck")]}, protocol=2))
    return sum(p.stat().st_size for p in folder.iterdir())


def write_jpegs(root: Path, n: int) -> int:
    from PIL import Image

    rng = np.random.default_rng(7)
    total = 0
    for i in range(n):
        w, h = int(rng.integers(360, 440)), int(rng.integers(310, 390))
        x = image_like(1, max(w, h), 1000 + i)[0][:, :h, :w].transpose(1, 2, 0)
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(x)).save(path, quality=90)
        total += path.stat().st_size
    return total


def prepare(work: Path, name: str, **cfg) -> tuple[Path, float]:
    config = parse(images.Config, cfg, f"data.{name}")
    t0 = time.perf_counter()
    manifest = images.ingest(config, work / name / "raw")
    t1 = time.perf_counter()
    images.preprocess(config, work / name / "raw", work / name / "shards", manifest)
    t2 = time.perf_counter()
    print(f"  {name}: ingest {t1 - t0:.1f} s, preprocess {t2 - t1:.1f} s", flush=True)
    return work / name / "shards", t2 - t1


def shard_bytes(shards: Path) -> tuple[int, int]:
    stats = read_stats(shards)
    return (sum(s["bytes"] for v in stats["splits"].values() for s in v["shards"]),
            sum(v["samples"] for v in stats["splits"].values()))


def throughput(shards: Path, workers: int, batch: int = 128, limit: int = 0) -> float:
    """What the training loop reads: uint8 batches from the workers, scaled to floats on arrival."""
    ds = open_split(shards, "train", shuffle=True, batch_size=batch, augment=True, uint8_images=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    n, t0 = 0, None
    for i, (x, _) in enumerate(loader):
        x = x.float().div_(255)
        if i == 0:  # from the first batch on: worker start-up is not throughput
            t0 = time.perf_counter()
            continue
        n += len(x)
        if limit and n >= limit:
            break
    return n / (time.perf_counter() - t0)


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
PEAK_RSS = """
import sys
sys.path.insert(0, {repo!r})
from components.data.registry import open_split
n = 0
for x, y in open_split({shards!r}, "train", shuffle=True, batch_size=128, augment=True):
    n += len(y)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(n, hwm.split()[1])
"""


def peak_rss(shards: Path) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", PEAK_RSS.format(repo=str(REPO), shards=str(shards))],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1]) / 1024


def encoding_choice(n: int = 2000) -> None:
    """Raw uint8 npy (in a gzipped tar) against PNG for 32x32x3 pixel arrays."""
    import gzip

    from PIL import Image

    x = image_like(n, 32, 99)
    pngs = []
    for a in x:
        buf = io.BytesIO()
        Image.fromarray(a.transpose(1, 2, 0)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    npys = []
    for a in x:
        buf = io.BytesIO()
        np.save(buf, a)
        npys.append(buf.getvalue())
    t0 = time.perf_counter()
    for raw in pngs:
        torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw))).copy()).permute(2, 0, 1)
    t_png = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for raw in npys:
        torch.from_numpy(load_npy(raw))
    t_npy = (time.perf_counter() - t0) / n * 1e6
    packed = gzip.compress(b"".join(npys), 6)
    gz_npy = len(packed) / n
    gz_png = len(gzip.compress(b"".join(pngs), 6)) / n
    t0 = time.perf_counter()
    gzip.decompress(packed)
    t_gunzip = (time.perf_counter() - t0) / n * 1e6
    print(f"\n2. Pixel arrays (32x32x3, {n} image-like images): raw uint8 = 3072 bytes")
    print(f"{'encoding':<26}{'bytes/image':>12}{'decode us/image':>17}")
    print(f"{'npy uint8, gzip -6':<26}{gz_npy:>12.0f}{t_npy + t_gunzip:>17.1f}   (of which gunzip {t_gunzip:.1f})")
    print(f"{'PNG (gzip adds nothing)':<26}{gz_png:>12.0f}{t_png:>17.1f}")


def resnet20_rate(batch: int = 128, steps: int = 15) -> float:
    from components.models import resnet

    model = resnet.build(resnet.Config(depth=20, in_channels=3, image_size=32, num_classes=10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="write the data here and keep it (default: a temporary folder)")
    parser.add_argument("--cifar-train", type=int, default=50_000)
    parser.add_argument("--cifar-test", type=int, default=10_000)
    parser.add_argument("--jpegs", type=int, default=2_000)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}; data under {work}", flush=True)
        t0 = time.perf_counter()
        cifar_bytes = write_cifar(work / "src-cifar", args.cifar_train, args.cifar_test)
        jpeg_bytes = write_jpegs(work / "src-jpegs", args.jpegs)
        print(f"  sources written in {time.perf_counter() - t0:.0f} s", flush=True)
        cifar, t_cifar = prepare(work, "cifar", source="cifar10", path=str(work / "src-cifar"),
                                 samples_per_shard=1000, val_fraction=0.1, fit_evaluator=False)
        # The same shards, train cut to its first 10,000 samples, for the memory comparison.
        small = work / "cifar10k"
        small.mkdir(exist_ok=True)
        stats = json.loads((cifar / "stats.json").read_text())
        kept, total = [], 0
        for entry in stats["splits"]["train"]["shards"]:
            if total >= min(10_000, stats["splits"]["train"]["samples"] // 5):
                break
            kept.append(entry)
            total += entry["samples"]
            if not (small / entry["file"]).exists():
                (small / entry["file"]).symlink_to(cifar / entry["file"])
        stats["splits"]["train"].update(shards=kept, samples=total)
        (small / "stats.json").write_text(json.dumps(stats))
        folder, t_folder = prepare(work, "folder", source="imagefolder", path=str(work / "src-jpegs"),
                                   samples_per_shard=200, augment={"style": "imagenet", "size": 224},
                                   fit_evaluator=False, stats_samples=500)

        n_cifar = args.cifar_train + args.cifar_test
        cb, cn = shard_bytes(cifar)
        fb, fn = shard_bytes(folder)
        print("\n1. Preprocess and shard bytes")
        print(f"{'dataset':<34}{'preprocess s':>13}{'source B/sample':>17}{'shard B/sample':>16}{'ratio':>8}")
        print(f"{'CIFAR-10 format, 60,000 (raw uint8)':<34}{t_cifar:>13.1f}{3072:>17}{cb / cn:>16.0f}"
              f"{cb / cn / 3072:>8.3f}")
        print(f"{'  (beside the pickle files)':<34}{'':>13}{cifar_bytes / n_cifar:>17.0f}{cb / cn:>16.0f}"
              f"{cb / cifar_bytes:>8.3f}")
        print(f"{'image folder, 2,000 JPEGs':<34}{t_folder:>13.1f}{jpeg_bytes / args.jpegs:>17.0f}{fb / fn:>16.0f}"
              f"{fb / jpeg_bytes:>8.3f}")

        encoding_choice()

        print("\n3. Reader throughput, decode and augmentation included (samples/s)")
        print(f"{'dataset':<44}{'0 workers':>11}{'2 workers':>11}")
        c0, c2 = throughput(cifar, 0, limit=20_000), throughput(cifar, 2, limit=40_000)
        print(f"{'CIFAR, pad 4 + random crop 32 + flip':<44}{c0:>11.0f}{c2:>11.0f}")
        f0, f2 = throughput(folder, 0, batch=64), throughput(folder, 2, batch=64)
        print(f"{'JPEG ~400x350, RandomResizedCrop(224) + flip':<44}{f0:>11.0f}{f2:>11.0f}"
              f"   ({f2 / 2:.0f} per core with 2 workers)")

        print("\n4. Peak RSS of one reading process (a loader worker's work, torch imported)")
        n10, rss10 = peak_rss(small)
        n50, rss50 = peak_rss(cifar)
        print(f"  {n10:>6} samples: {rss10:.0f} MiB\n  {n50:>6} samples: {rss50:.0f} MiB   "
              f"(ratio {rss50 / rss10:.3f})")

        rate = resnet20_rate()
        print("\n5. ResNet-20 (CIFAR style, 32x32x3) training on this machine's "
              f"{torch.get_num_threads()} threads: {rate:.0f} samples/s")
        print(f"   reader with 2 loader workers / ResNet-20 consumption: {c2 / rate:.1f}x")


if __name__ == "__main__":
    main()
