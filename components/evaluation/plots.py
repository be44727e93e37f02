"""Figures people look at instead of tables: training curves, LR schedules, sweeps, confusion matrices.

Functions return matplotlib Figures; callers in ``pipelines/`` decide where they are saved.
``dvc plots show`` renders its HTML with a chart library from a CDN, so these PNGs are the
offline view of the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def curve_tables(steps: Sequence[dict], epochs: Sequence[dict]) -> dict[str, list[dict]]:
    """One table per curve, ``<name>.csv`` -> rows (step, value), for ``dvc plots`` (x = step, y =
    the last column): every per-step value, and every per-epoch ``val_*`` metric."""
    tables = {f"{col}.csv": [{"step": r["step"], col: r[col]} for r in steps if col in r]
              for col in (k for k in (steps[0] if steps else {}) if k not in ("step", "epoch"))}
    tables.update({f"{col}.csv": [{"step": e["step"], col: e[col]} for e in epochs if col in e]
                   for col in (k for k in (epochs[0] if epochs else {}) if k.startswith("val_"))})  # epoch 0 validates
    return tables


def training_curves(steps: Sequence[dict], epochs: Sequence[dict], title: str,
                    val_keys: Sequence[str] | None = None) -> Figure:
    """Whatever a family logs: losses per step (and val loss per epoch), the other per-step
    values (accuracy, D(x), D(G(z))...), per-epoch val metrics (``val_keys``, default all but
    the loss), and the learning rates."""
    skip = {"step", "epoch"}
    cols = [k for k in (steps[0] if steps else {}) if k not in skip]
    losses = [k for k in cols if k.endswith("loss")]
    lrs = [k for k in cols if k == "lr" or k.startswith("lr_")]
    others = [k for k in cols if k not in losses and k not in lrs and not k.startswith("grad_norm")]
    vals = [k for k in (epochs[0] if epochs else {}) if k.startswith("val_") and k != "val_loss"
            and (val_keys is None or k in val_keys)]
    panels = [("loss", losses), ("train, per step", others), ("val, per epoch", vals), ("learning rate", lrs)]
    panels = [(t, ks) for t, ks in panels if ks or t == "loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.6), squeeze=False)
    s = [r["step"] for r in steps]
    e_step = [r["step"] for r in epochs]
    for ax, (name, keys) in zip(axes[0], panels):
        rows, xs = (epochs, e_step) if name.startswith("val") else (steps, s)
        for k in keys:
            pts = [(x, r[k]) for x, r in zip(xs, rows) if k in r]
            if pts:
                ax.plot(*zip(*pts), "o-" if rows is epochs else "-", lw=0.8, ms=3, label=k)
        if name == "loss" and epochs and "val_loss" in epochs[0]:
            ax.plot(*zip(*[(x, r["val_loss"]) for x, r in zip(e_step, epochs) if "val_loss" in r]), "o-", ms=3,
                    label="val_loss (epoch)")
        values = [r[k] for r in steps for k in losses if k in r]
        if name == "loss" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def sweep(trials: Sequence[dict], metric: str, title: str) -> Figure:
    """A successive-halving sweep: each trial's ``metric`` at the rungs it reached, by epochs
    (left; the winner bold, the baseline dashed), and every trial's LR per step (right).

    ``trials``: dicts with ``trial``, ``schedule``, ``lr``, ``at`` ({epochs: metric}), optional
    ``steps`` (rows with ``step`` and ``lr``) and ``winner`` / ``baseline`` flags.
    """
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    schedules = sorted({t["schedule"] for t in trials})
    colour = {name: plt.cm.tab10(i % 10) for i, name in enumerate(schedules)}
    for t in trials:
        pts = sorted((int(e), v) for e, v in t["at"].items() if v == v)
        if not pts:
            continue
        style = {"lw": 2.2, "zorder": 3} if t.get("winner") else {"lw": 0.9, "alpha": 0.7}
        ax0.plot(*zip(*pts), "--" if t.get("baseline") else "-", marker="o", ms=3, color=colour[t["schedule"]],
                 **style)
    for name in schedules:
        ax0.plot([], [], color=colour[name], label=name)
    ax0.set_xscale("log", base=2)
    ax0.set_xlabel("epochs (rungs)")
    ax0.set_ylabel(metric)
    ax0.set_title("trials at each rung (bold: winner, dashed: params.yaml's own)")
    ax0.legend(fontsize=7)
    for t in trials:
        if t.get("steps"):
            ax1.plot([r["step"] for r in t["steps"]], [r["lr"] for r in t["steps"]], lw=2 if t.get("winner") else 0.8,
                     color=colour[t["schedule"]], alpha=1 if t.get("winner") else 0.6)
    ax1.set_title("learning rate per step, every trial")
    ax1.set_xlabel("step")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.imshow(matrix, cmap="Blues")
    n = matrix.shape[0]
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bars(groups: Sequence, series: dict[str, Sequence[float]], counts: Sequence[int], title: str,
         xlabel: str, ylabel: str) -> Figure:
    """Grouped bars (one colour per series) with the sample count of each group written above it."""
    # Wide enough for the groups and for the title (about 0.075 inch per character at 9 points).
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(groups) + 2, 0.075 * len(title) + 0.5), 3.6))
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (name, ys) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=name)
    for xi, n in zip(x, counts):
        ax.text(xi, 1.01, str(n), ha="center", va="bottom", fontsize=6, color="grey")
    ax.set_xticks(x, [str(g) for g in groups])
    ax.set_ylim(0, 1.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, rows: int, title: str, row_labels: Sequence[str] | None = None) -> Figure:
    """Images (N, [C,] H, W) in [0, 1] as a grid of ``rows`` rows, grey (one channel) or RGB."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    cols = -(-len(images) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(0.55 * cols + 0.6, 0.55 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(images):
            ax.imshow(np.clip(images[i], 0, 1), cmap="gray_r" if images.ndim == 3 else None, vmin=0, vmax=1)
        else:
            ax.axis("off")
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


def latent_projection(latents: np.ndarray, labels: np.ndarray, title: str) -> Figure:
    """The first two principal components of ``latents`` (N, d), one colour per class."""
    x = np.asarray(latents, np.float64)
    x = x - x.mean(0)
    if x.shape[1] > 2:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:2].T
    elif x.shape[1] == 1:
        x = np.c_[x, np.zeros(len(x))]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    k = max(int(np.max(labels)) + 1, 2) if len(labels) else 10
    points = ax.scatter(x[:, 0], x[:, 1], c=labels, cmap=plt.get_cmap("tab10" if k <= 10 else "tab20", k), s=8,
                        vmin=-0.5, vmax=k - 0.5)
    fig.colorbar(points, ax=ax, ticks=range(k), label="class")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def quality_by_steps(rows: Sequence[dict], fid_floor: float, title: str) -> Figure:
    """FID (left) and precision/recall/coverage (right) of each sampler against its step count."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        pts = [r for r in rows if r["sampler"] == sampler]
        steps = [r["steps"] for r in pts]
        ax0.plot(steps, [r["fid"] for r in pts], "o-", label=sampler)
        for metric, style in (("precision", "o-"), ("recall", "s--"), ("coverage", "^:")):
            ax1.plot(steps, [r[metric] for r in pts], style, label=f"{sampler} {metric}")
    ax0.axhline(fid_floor, color="grey", lw=0.8, ls="--", label="floor (real images)")
    ax0.set_ylabel("FID")
    ax1.set_ylim(0, 1.02)
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def similarity(matrix: np.ndarray, images: np.ndarray, captions: Sequence[str], title: str) -> Figure:
    """An image–text similarity matrix: images as columns (shown above), captions as rows."""
    n = len(matrix)
    fig = plt.figure(figsize=(4 + 0.55 * n, 1.5 + 0.42 * n))
    grid = fig.add_gridspec(2, n, height_ratios=[1, n], hspace=0.05, wspace=0.05)
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        img = images[j]
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray_r", vmin=0, vmax=1)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    im = ax.imshow(matrix.T, cmap="viridis", aspect="auto")
    ax.set_yticks(range(n), [c[:40] for c in captions], fontsize=7)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("image")
    fig.colorbar(im, ax=ax, fraction=0.03, label="cosine")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.3)
    return fig


def save(fig: Figure, path) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
