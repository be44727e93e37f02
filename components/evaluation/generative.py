"""Sample quality of generative models, shared by the GAN, VAE and diffusion families.

Every metric is computed on the features of the dataset's own feature network
(``components/data/features.py``), between ``n`` generated images and the ``n`` images of a
held-out split (``n`` = the split's size, so every model is scored on the same count):

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to both sets;
- KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel (x·y/d + 1)³, mean and std
  over random subsets; unbiased, so it is comparable at small n where FID is biased upward;
- precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020)
  from k-nearest-neighbour balls: precision/density say how many samples look real,
  recall/coverage how much of the real data the samples reach;
- the class distribution of the samples under the same network: classes covered (a class
  counts when it gets at least a fifth of its uniform share), the balance (entropy of the
  predicted classes / log C), and for a conditional model the class accuracy (the
  fraction classified as the class it was asked for).

A number is only meaningful beside its range, so every result carries a ``floor`` (the
train split scored as if it were samples: what a generator that reproduced its training
data would reach at this n, averaged over draws, with its spread) and a ``ceiling``
(uniform noise images). A model within the floor's spread is as close to the held-out
images as real digits are, as far as this network and n can tell.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from components.data import features as featnet

METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")  # the distribution metrics
LOWER_IS_BETTER = {"fid", "kid"}


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """||μa − μb||² + tr(Σa + Σb − 2 (Σa Σb)^½), with tr((Σa Σb)^½) from the symmetric Σa^½ Σb Σa^½."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ sb @ root
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² with the cubic polynomial kernel; (mean, std) over ``subsets`` random subsets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage from the k-NN balls of each set."""
    real_t, fake_t = torch.from_numpy(np.asarray(real, np.float64)), torch.from_numpy(np.asarray(fake, np.float64))

    def radii(x: torch.Tensor) -> torch.Tensor:  # distance to the k-th neighbour other than itself
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values

    r_real, r_fake = radii(real_t), radii(fake_t)
    d = torch.cdist(real_t, fake_t)  # (real, fake)
    inside_real = d <= r_real[:, None]  # fake j inside real i's ball
    return {"precision": inside_real.any(0).double().mean().item(),
            "recall": (d <= r_fake[None, :]).any(1).double().mean().item(),
            "density": inside_real.double().sum().item() / (k * d.shape[1]),
            "coverage": (d.min(1).values <= r_real).double().mean().item()}


def class_metrics(probs: np.ndarray, labels: np.ndarray | None, num_classes: int) -> dict[str, float]:
    pred = probs.argmax(1)
    share = np.bincount(pred, minlength=num_classes) / len(pred)
    nonzero = share[share > 0]
    out = {"classes_covered": float((share >= 0.2 / num_classes).sum()),
           "class_balance": float(-(nonzero * np.log(nonzero)).sum() / np.log(num_classes))}
    if labels is not None:
        out["class_accuracy"] = float((pred == np.asarray(labels)).mean())
    return out


class Evaluator:
    """The feature network and reference features of one dataset's shards."""

    def __init__(self, directory: Path):
        self.net, self.meta, self.ref = featnet.load(directory)
        self.cfg = featnet.FeatureConfig(**self.meta["config"])
        self.num_classes = self.meta["num_classes"]
        # Metrics work on features standardised by the train split's per-dimension mean and std,
        # so that no dimension dominates the distances and the KID kernel stays in a sane range.
        self.mean, self.std = self.ref["train_features"].mean(0), self.ref["train_features"].std(0) + 1e-8
        with torch.no_grad():  # the network's class probabilities of the train images (for the floor)
            raw = torch.from_numpy(self.ref["train_features"]).float()
            self.train_probs = torch.softmax(self.net.head(torch.relu(raw)), 1).numpy()
        for k in [k for k in self.ref if k.endswith("_features")]:
            self.ref[k] = self.standardise(self.ref[k])

    def standardise(self, feats: np.ndarray) -> np.ndarray:
        return (feats - self.mean) / self.std

    def num_samples(self, split: str) -> int:
        """How many samples a model is scored on against ``split``: the split's size."""
        return len(self.ref[f"{split}_features"])

    def embed(self, images) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(np.asarray(images, np.float32))
        if x.ndim == 3:
            x = x[:, None]
        return featnet.embed(self.net, x)

    def _score(self, feats: np.ndarray, probs: np.ndarray | None, split: str,
               labels: np.ndarray | None = None) -> dict[str, float]:
        real = self.ref[f"{split}_features"]
        if len(feats) != len(real):
            raise ValueError(f"score {len(real)} samples against {split} (its size), got {len(feats)}; "
                             f"use Evaluator.num_samples({split!r})")
        kid_mean, kid_std = kid(feats, real, self.cfg.kid_subsets, self.cfg.kid_subset_size, self.cfg.seed)
        out = {"fid": fid(feats, real), "kid": kid_mean, "kid_std": kid_std, **prdc(real, feats, self.cfg.knn)}
        if probs is not None:
            out.update(class_metrics(probs, labels, self.num_classes))
        return out

    def score(self, images, split: str, labels: np.ndarray | None = None) -> dict[str, float]:
        """Every metric of ``images`` (N, [C,] H, W) in [0, 1] against ``split``; ``labels``: the
        classes a conditional model was asked for."""
        feats, probs = self.embed(images)
        return self._score(self.standardise(feats), probs, split, labels)

    @functools.cache
    def bounds(self, split: str, draws: int = 10) -> dict[str, dict[str, float]]:
        """``floor``: ``n`` train images scored as if they were samples, averaged over ``draws``
        random subsets (at n of a few hundred FID varies by ±50% between subsets; the spread is
        ``floor_std``); ``ceiling``: ``n`` uniform-noise images. Both at a model's n."""
        n = self.num_samples(split)
        rng = np.random.default_rng(self.cfg.seed)
        train, train_labels, train_probs = self.ref["train_features"], self.ref["train_labels"], self.train_probs
        runs = []
        for _ in range(draws):
            pick = rng.choice(len(train), n, replace=False)
            runs.append(self._score(train[pick], train_probs[pick], split, train_labels[pick]))
        floor = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        floor_std = {k: float(np.std([r[k] for r in runs])) for k in runs[0]}
        shape = (n, self.meta["in_channels"], self.meta["image_size"], self.meta["image_size"])
        ceiling = self.score(rng.random(shape, dtype=np.float32), split)
        return {"floor": floor, "floor_std": floor_std, "ceiling": ceiling}


@functools.cache
def evaluator(shard_dir: str) -> Evaluator:
    """The evaluator of a shard directory, loaded once per process."""
    return Evaluator(Path(shard_dir) / "evaluator")


def score_samples(shard_dir, split: str, sample: Callable[[int, torch.Tensor | None], torch.Tensor],
                  num_classes: int | None = None, bounds: bool = False) -> dict:
    """Score ``sample(n, labels)`` against ``split``, n = the split's size. For a conditional model
    (``num_classes`` given) labels are balanced 0, 1, ..., C−1, 0, ... and class accuracy is
    measured against them; else labels is None. ``bounds`` adds floors, ceilings and n (the
    evaluate stage's form); without it, the per-epoch validation's."""
    ev = evaluator(str(shard_dir))
    n = ev.num_samples(split)
    labels = torch.arange(n) % num_classes if num_classes else None
    result = ev.score(sample(n, labels).cpu().numpy(), split, None if labels is None else labels.numpy())
    return {**with_bounds(result, ev, split), "num_samples": n} if bounds else result


def with_bounds(result: dict[str, float], ev: Evaluator, split: str) -> dict:
    """``result`` plus ``<metric>_floor`` / ``<metric>_ceiling`` for every distribution metric."""
    b = ev.bounds(split)
    return {**result, **{f"{m}_{side}": b[side][m] for m in METRICS for side in ("floor", "floor_std", "ceiling")}}


def table(result: dict) -> str:
    """A markdown table of every distribution metric with its floor and ceiling."""
    rows = []
    for m in METRICS:
        better = "lower" if m in LOWER_IS_BETTER else "higher"
        rows.append(f"| {m} | {result[m]:.4g} | {result[f'{m}_floor']:.4g} ± {result[f'{m}_floor_std']:.2g} "
                    f"| {result[f'{m}_ceiling']:.4g} | {better} |")
    return ("| metric | model | floor: train images as samples (mean ± std, 10 draws) | ceiling: noise | better |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def sample_grid(result: dict, title: str, key: str = "grid"):
    """The figure of ``result[key]``, samples (rows, columns, [C,] H, W): one row per class
    (labelled from ``result["classes"]``) where the samples are conditional."""
    from components.evaluation import plots

    grid = np.asarray(result[key])
    labels = result["classes"] if "class_accuracy" in result and key == "grid" else None
    return plots.image_grid(grid.reshape(-1, *grid.shape[2:]), grid.shape[0], title, labels)
