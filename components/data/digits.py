"""scikit-learn's 8x8 handwritten digits (1,797 images, 16 grey levels), shipped inside sklearn.

The split is stratified by class and fixed by a seed: the same seed and fractions give the
same indices on every machine, and no stage downstream of ingest ever re-splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.config import bounds
from components.data import features
from components.data.manifest import write_manifest
from components.data.shards import write_shards
from components.data.splits import stratified_split

NUM_CLASSES = 10
IMAGE_SIZE = 8
PIXEL_MAX = 16.0  # raw values are counts 0..16 of a 4x4 block


@dataclass
class Config:
    """``data.digits``: scikit-learn's 8x8 digits, split once by a seed."""
    seed: int = 0
    val_fraction: float = field(default=0.15, metadata=bounds(gt=0, lt=0.5))
    test_fraction: float = field(default=0.15, metadata=bounds(gt=0, lt=0.5))
    samples_per_shard: int = field(default=128, metadata=bounds(ge=1))
    # The generative evaluator's feature network, fitted on train (see components/data/features.py).
    evaluator: features.FeatureConfig = field(default_factory=features.FeatureConfig)


def ingest(cfg: Config, out_dir: Path) -> dict:
    """Write the images, labels and split indices to ``out_dir`` with a checksum manifest."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # (N, 8, 8), 0..16
    labels = bunch.target.astype(np.int64)  # (N,)
    split = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "digits.npz", images=images, labels=labels)
    np.savez(out_dir / "split.npz", **split)
    return write_manifest(out_dir, {
        "dataset": "digits", "source": "sklearn.datasets.load_digits",
        "num_samples": int(len(labels)), "num_classes": NUM_CLASSES,
        "split_sizes": {k: int(len(v)) for k, v in split.items()},
    })


def load_raw(raw_dir: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Images scaled to [0, 1] as (N, 1, 8, 8) float32, labels (N,), and the split."""
    with np.load(raw_dir / "digits.npz") as f:
        images = (f["images"].astype(np.float32) / PIXEL_MAX)[:, None]
        labels = f["labels"]
    with np.load(raw_dir / "split.npz") as f:
        split = {k: f[k] for k in ("train", "val", "test")}
    return images, labels, split


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Shards of ``input.npy`` (1, 8, 8) float32 + ``target.cls`` per split, with class counts,
    and the generative evaluator's feature network fitted on train (``evaluator/``)."""
    images, labels, split = load_raw(raw_dir)
    evaluator = features.fit(cfg.evaluator, {k: (images[idx], labels[idx]) for k, idx in split.items()},
                             manifest["num_classes"], out_dir / "evaluator")
    columns = {k: {"input.npy": images[idx], "target.cls": labels[idx]} for k, idx in split.items()}
    split_meta = {}
    for k, idx in split.items():
        classes, counts = np.unique(labels[idx], return_counts=True)
        split_meta[k] = {"class_counts": {str(int(c)): int(n) for c, n in zip(classes, counts)},
                         "input_mean": float(images[idx].mean()), "input_std": float(images[idx].std()),
                         "input_shape": list(images.shape[1:])}
    return write_shards(out_dir, columns, cfg.samples_per_shard, split_meta=split_meta, meta={
        "dataset": "digits", "num_classes": manifest["num_classes"], "input_shape": list(images.shape[1:]),
        "evaluator": evaluator, "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}})
