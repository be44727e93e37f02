"""Sample quality of generative models, shared by the GAN, VAE and diffusion families.

Every metric is computed on the features of the dataset's own feature network
(``components/data/features.py``), between ``n`` generated images and the ``n`` images of a
held-out split (``n`` = the split's size, so every model is scored on the same count):

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to both sets;
- KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel (x·y/d + 1)³ over every pair,
  unbiased, so it is comparable at small n where FID is biased upward (and near 0, maybe below,
  for samples as good as real images). Its 95% interval comes from half-sampling: the score on
  random halves of both sets, drawn without replacement, spreads about the full score as the full
  score spreads about its expectation (no bootstrap: resampling with replacement duplicates
  images, which biases FID and KID upward). A comparison is paired: KID of the samples minus KID
  of as many real training images, on the same halves of the held-out images, is called a
  difference only when its interval excludes zero;
- precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020)
  from k-nearest-neighbour balls: precision/density say how many samples look real,
  recall/coverage how much of the real data the samples reach;
- the class distribution of the samples under the same network: classes covered (a class
  counts when it gets at least a fifth of its uniform share), the balance (entropy of the
  predicted classes / log C), and for a conditional model the class accuracy (the
  fraction classified as the class it was asked for).

Memorisation (after Meehan et al. 2020's three-sample test, without its cells): each sample's
distance to its nearest training image against each held-out image's distance to its nearest
training image, compared by the Mann-Whitney U statistic as a z-score. A copier's samples sit
closer to the training set than new real images do (z far below 0); z below ``verdicts.COPY_Z`` fails.

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
from components.evaluation import verdicts

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


Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
BLOCK = 2048  # kernel rows at a time: memory bounded by BLOCK x n, whatever the split's size


def _quadratic_forms(x: np.ndarray, y: np.ndarray, wx: np.ndarray, wy: np.ndarray, same: bool) -> np.ndarray:
    """Per column k: Σ_ij wx[i,k] K(x_i, y_j) wy[j,k] with the KID kernel K(x, y) = (x·y/d + 1)³, over
    blocks of rows; with ``same`` (y is x, wy is wx) without the diagonal terms."""
    d = x.shape[1]
    out = np.zeros(wx.shape[1])
    for start in range(0, len(x), BLOCK):
        rows = slice(start, start + BLOCK)
        kernel = (x[rows] @ y.T / d + 1) ** 3
        out += ((kernel @ wy) * wx[rows]).sum(0)
        if same:
            diagonal = ((x[rows] * x[rows]).sum(1) / d + 1) ** 3
            out -= (diagonal[:, None] * wx[rows] * wx[rows]).sum(0)
    return out


def _kid_columns(fake: np.ndarray, real: np.ndarray, wf: np.ndarray, wr: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of the subsets that each column of the 0/1 matrices ``wf``, ``wr`` picks."""
    nf, nr = wf.sum(0), wr.sum(0)
    return (_quadratic_forms(fake, fake, wf, wf, True) / (nf * (nf - 1))
            + _quadratic_forms(real, real, wr, wr, True) / (nr * (nr - 1))
            - 2 * _quadratic_forms(fake, real, wf, wr, False) / (nf * nr))


def _halves(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 1 + draws) 0/1 columns: everything, then ``draws`` random halves without replacement."""
    w = np.zeros((n, draws + 1))
    w[:, 0] = 1
    for k in range(1, draws + 1):
        w[rng.choice(n, n // 2, replace=False), k] = 1
    return w


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² between ``a`` and ``b`` over every pair, with the cubic polynomial kernel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(_kid_columns(a, b, np.ones((len(a), 1)), np.ones((len(b), 1)))[0])


def kid_interval(fake: np.ndarray, real: np.ndarray, draws: int = 200, seed: int = 0,
                 reference: np.ndarray | None = None) -> dict[str, float]:
    """KID of ``fake`` against ``real`` with its 95% interval from ``draws`` half-samples (each set
    halved without replacement); with ``reference`` (say real training images, as many as
    ``fake``), also ``kid_minus_reference``: KID(fake) − KID(reference), paired on the same halves
    of ``real``, with its interval."""
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    rng = np.random.default_rng(seed)
    wr = _halves(len(real), draws, rng)
    values = _kid_columns(fake, real, _halves(len(fake), draws, rng), wr)
    se = float(np.std(values[1:]))
    out = {"kid": float(values[0]), "kid_se": se, "kid_low": float(values[0] - Z95 * se),
           "kid_high": float(values[0] + Z95 * se)}
    if reference is not None:
        diff = values - _kid_columns(np.asarray(reference, np.float64), real, _halves(len(reference), draws, rng), wr)
        dse = float(np.std(diff[1:]))
        out.update({"kid_minus_reference": float(diff[0]), "kid_minus_reference_low": float(diff[0] - Z95 * dse),
                    "kid_minus_reference_high": float(diff[0] + Z95 * dse)})
    return out


def compare(features: dict[str, np.ndarray], real: np.ndarray, draws: int = 200, seed: int = 0) -> dict:
    """Every pair of models by KID against ``real``: ``kid`` per model, and per pair (a before b in
    ``features``' order) KID(a) − KID(b) with its 95% interval, paired on the same halves of
    ``real`` for every pair (one seed)."""
    names = list(features)
    out: dict = {"kid": {}, "pairs": {}}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = kid_interval(features[a], real, draws, seed, reference=features[b])
            out["kid"][a] = r["kid"]
            out["kid"][b] = r["kid"] - r["kid_minus_reference"]
            out["pairs"][f"{a}_minus_{b}"] = {"a": a, "b": b, "difference": r["kid_minus_reference"],
                                              "low": r["kid_minus_reference_low"], "high": r["kid_minus_reference_high"]}
    return out


def _nearest(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row of ``x``'s Euclidean distance to its nearest row of ``y``, over blocks of rows."""
    yt = torch.from_numpy(np.asarray(y, np.float64))
    xt = torch.from_numpy(np.asarray(x, np.float64))
    return torch.cat([torch.cdist(xt[i:i + BLOCK], yt).min(1).values for i in range(0, len(xt), BLOCK)]).numpy()


def memorisation(fake: np.ndarray, heldout: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Are the samples nearer the training images than new real images are? ``memorisation_z``:
    the Mann-Whitney z of the samples' nearest-training-image distances against the held-out
    images' (0: as near as new real images; far below 0: copies; above 0: farther, an
    underfit); ``near_copies``: the share of samples nearer a training image than 95% of the
    held-out images are (0.05 for new real images); ``nn_distance_ratio``: the medians' ratio."""
    d_fake, d_held = _nearest(fake, train), np.sort(_nearest(heldout, train))
    n1, n2 = len(d_fake), len(d_held)
    # U: pairs (sample, held-out image) where the sample is the farther from the training set; ties count half
    u = (np.searchsorted(d_held, d_fake, "left") + np.searchsorted(d_held, d_fake, "right")).sum() / 2
    z = (u - n1 * n2 / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return {"memorisation_z": float(z), "near_copies": float((d_fake < np.quantile(d_held, 0.05)).mean()),
            "nn_distance_ratio": float(np.median(d_fake) / np.median(d_held))}


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
        out = {"fid": fid(feats, real), "kid": kid(feats, real), **prdc(real, feats, self.cfg.knn)}
        if probs is not None:
            out.update(class_metrics(probs, labels, self.num_classes))
        return out

    def score(self, images, split: str, labels: np.ndarray | None = None, detail: bool = False) -> dict[str, float]:
        """Every metric of ``images`` (N, [C,] H, W) in [0, 1] against ``split``; ``labels``: the
        classes a conditional model was asked for; ``detail``: KID's interval, the paired KID
        against real training images and memorisation too (the evaluate stage's)."""
        feats, probs = self.embed(images)
        feats = self.standardise(feats)
        out = self._score(feats, probs, split, labels)
        return {**out, **self.detail(feats, split), "sample_features": feats.astype(np.float32)} if detail else out

    def detail(self, feats: np.ndarray, split: str) -> dict[str, float]:
        """KID with its interval, KID minus that of as many real training images (``kid_minus_real``,
        paired), and the memorisation test, of standardised sample features against ``split``."""
        real, train = self.ref[f"{split}_features"], self.ref["train_features"]
        pick = np.random.default_rng(self.cfg.seed).choice(len(train), len(real), replace=False)
        out = kid_interval(feats, real, self.cfg.kid_draws, self.cfg.seed, reference=train[pick])
        out = {k.replace("minus_reference", "minus_real"): v for k, v in out.items()}
        return {**out, **memorisation(feats, real, train)}

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
    result = ev.score(sample(n, labels).cpu().numpy(), split, None if labels is None else labels.numpy(), detail=bounds)
    return {**with_bounds(result, ev, split), "num_samples": n} if bounds else result


def with_bounds(result: dict[str, float], ev: Evaluator, split: str) -> dict:
    """``result`` plus ``<metric>_floor`` / ``<metric>_ceiling`` for every distribution metric."""
    b = ev.bounds(split)
    return {**result, **{f"{m}_{side}": b[side][m] for m in METRICS for side in ("floor", "floor_std", "ceiling")}}


def table(result: dict) -> str:
    """A markdown table of every distribution metric with its floor and ceiling (KID with its
    interval), and what the intervals and the memorisation test say, in words."""
    rows = []
    for m in METRICS:
        better = "lower" if m in LOWER_IS_BETTER else "higher"
        value = f"{result[m]:.4g}" + (f" [{result[f'{m}_low']:.2g}, {result[f'{m}_high']:.2g}]"
                                      if f"{m}_low" in result else "")
        rows.append(f"| {m} | {value} | {result[f'{m}_floor']:.4g} ± {result[f'{m}_floor_std']:.2g} "
                    f"| {result[f'{m}_ceiling']:.4g} | {better} |")
    return ("| metric | model | floor: train images as samples (mean ± std, 10 draws) | ceiling: noise | better |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n" + " ".join(verdicts.sample_quality(result)) + "\n")


def sample_grid(result: dict, title: str, key: str = "grid"):
    """The figure of ``result[key]``, samples (rows, columns, [C,] H, W): one row per class
    (labelled from ``result["classes"]``) where the samples are conditional."""
    from components.evaluation import plots

    grid = np.asarray(result[key])
    labels = result["classes"] if "class_accuracy" in result and key == "grid" else None
    return plots.image_grid(grid.reshape(-1, *grid.shape[2:]), grid.shape[0], title, labels)
