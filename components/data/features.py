"""The feature network of the generative evaluator, fitted on an image dataset's train split.

FID, KID and precision/recall need an embedding in which distances mean something; the
usual one (Inception-v3 on ImageNet) is a download and was never trained on 8x8 digits.
This is our own: a small CNN trained on the train split at preprocess time, like the
tokenizer of the translation data, so it is versioned with the shards it was fitted on
(``<shards>/evaluator/``, its sha256 in ``stats.json``). Training is deterministic: one
thread, a fixed seed, a fixed order; the same data and config give the same bytes.

Written beside the weights: the features and labels of every split (``reference.npz``), so
evaluating a generator only embeds its own samples.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from components.config import bounds
from components.data.manifest import sha256

WEIGHTS, CONFIG, REFERENCE = "model.safetensors", "config.json", "reference.npz"


@dataclass
class FeatureConfig:
    """``data.<dataset>.evaluator``: the feature network and the sample counts of the metrics."""
    width: int = field(default=32, metadata=bounds(ge=4))
    feature_dim: int = field(default=64, metadata=bounds(ge=4))
    epochs: int = field(default=30, metadata=bounds(ge=1))
    batch_size: int = field(default=64, metadata=bounds(ge=1))
    lr: float = field(default=2e-3, metadata=bounds(gt=0))
    augment_shift: int = field(default=1, metadata=bounds(ge=0))
    seed: int = 0
    knn: int = field(default=5, metadata=bounds(ge=1))  # k of the k-NN balls (precision/recall/density/coverage)
    kid_draws: int = field(default=200, metadata=bounds(ge=20))  # half-samples of KID's interval
    max_samples: int = field(default=10_000, metadata=bounds(ge=100))  # per split: a seeded subset of larger ones


class FeatureNet(nn.Module):
    """conv-conv(stride 2)-conv -> linear ``feature_dim`` (the features) -> ReLU -> linear (classes)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int, feature_dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        side = (image_size + 1) // 2
        self.embed = nn.Linear(2 * width * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.drop = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer before its ReLU (closer to Gaussian than after it)."""
        return self.embed(torch.flatten(self.convs(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(F.relu(self.features(x))))


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shift(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    if k == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, [k] * 4)
    dy, dx = torch.randint(0, 2 * k + 1, (2, len(x)), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


def fit(cfg: FeatureConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int,
        out_dir: Path) -> dict:
    """Train on ``splits["train"]`` (images (N, C, H, W) in [0, 1], labels) and write the evaluator.

    Returns its summary (accuracy per split, sha256 of the weights) for ``stats.json``.
    """
    images, labels = (torch.from_numpy(np.ascontiguousarray(a)) for a in splits["train"])
    _, c, h, _ = images.shape
    with _one_thread():
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        net = FeatureNet(c, h, num_classes, cfg.width, cfg.feature_dim)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        steps = cfg.epochs * -(-len(images) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
        net.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(images), generator=gen)
            for i in range(0, len(images), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                loss = F.cross_entropy(net(_shift(images[idx], cfg.augment_shift, gen)), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        ref, accuracy = {}, {}
        for name, (x, y) in splits.items():
            feats, probs = embed(net, torch.from_numpy(np.ascontiguousarray(x)))
            ref[f"{name}_features"], ref[f"{name}_labels"] = feats, y
            accuracy[name] = float((probs.argmax(1) == y).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out_dir / WEIGHTS)
    meta = {"config": asdict(cfg), "in_channels": c, "image_size": h, "num_classes": num_classes,
            "accuracy": accuracy}
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    np.savez(out_dir / REFERENCE, **ref)
    return {"accuracy": accuracy, "sha256": sha256(out_dir / WEIGHTS), "reference_sha256": sha256(out_dir / REFERENCE)}


@torch.no_grad()
def embed(net: FeatureNet, images: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float64, class probabilities (N, C)) of images in [0, 1]."""
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(images[i:i + batch_size].float())
        feats.append(f.double().numpy())
        probs.append(torch.softmax(net.head(F.relu(f)), 1).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def load(directory: Path) -> tuple[FeatureNet, dict, dict[str, np.ndarray]]:
    """(network in eval mode, its config.json, the reference features and labels of every split)."""
    directory = Path(directory)
    if not (directory / WEIGHTS).exists():
        raise FileNotFoundError(f"{directory}: no evaluator here; it is written by the dataset's preprocess stage "
                                f"(`dvc repro preprocess-<dataset>`), for image datasets only")
    meta = json.loads((directory / CONFIG).read_text())
    cfg = FeatureConfig(**meta["config"])
    net = FeatureNet(meta["in_channels"], meta["image_size"], meta["num_classes"], cfg.width, cfg.feature_dim)
    net.load_state_dict(load_file(directory / WEIGHTS))
    net.eval()
    with np.load(directory / REFERENCE) as f:
        ref = {k: f[k] for k in f.files}
    return net, meta, ref
