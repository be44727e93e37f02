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


def training_curves(steps: Sequence[dict], epochs: Sequence[dict], title: str) -> Figure:
    """Loss and accuracy per step (train) and per epoch (val), and the learning rate per step."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    s = [r["step"] for r in steps]
    e_step = [r["step"] for r in epochs]
    axes[0].plot(s, [r["loss"] for r in steps], lw=0.8, label="train (step)")
    axes[0].plot(e_step, [r["val_loss"] for r in epochs], "o-", ms=3, label="val (epoch)")
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    if steps and "accuracy" in steps[0]:
        axes[1].plot(s, [r["accuracy"] for r in steps], lw=0.8, label="train (step)")
    if epochs and "val_accuracy" in epochs[0]:
        axes[1].plot(e_step, [r["val_accuracy"] for r in epochs], "o-", ms=3, label="val (epoch)")
    axes[1].set_title("accuracy")
    axes[2].plot(s, [r["lr"] for r in steps], lw=1.0)
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def sweep(trials: Sequence[dict], metric: str, title: str) -> Figure:
    """Final ``metric`` of each trial by schedule (left) and every trial's LR per step (right)."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    schedules = sorted({t["schedule"] for t in trials})
    for i, name in enumerate(schedules):
        ys = [t[metric] for t in trials if t["schedule"] == name]
        ax0.scatter(np.full(len(ys), i) + np.linspace(-0.1, 0.1, len(ys)), ys, s=30)
    ax0.set_xticks(range(len(schedules)), schedules)
    ax0.set_ylabel(metric)
    ax0.set_title("final metric by schedule")
    for t in trials:
        if t.get("steps"):
            ax1.plot([r["step"] for r in t["steps"]], [r["lr"] for r in t["steps"]], lw=0.8,
                     label=f"{t['schedule']} lr={t['lr']:.3g}")
    ax1.set_title("learning rate per step, every trial")
    ax1.set_xlabel("step")
    ax1.legend(fontsize=6)
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
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(groups) + 2), 3.6))
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


def save(fig: Figure, path) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
