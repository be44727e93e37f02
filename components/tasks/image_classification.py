"""The image-classification task: what every image classifier's family shares.

A family of this task builds an ``nn.Module`` mapping images (B, C, H, W) in [0, 1] to class
logits (B, num_classes), and its Config has ``in_channels``, ``image_size`` and ``num_classes``
(bound from the data by ``components.models.common.bind_images``). The rest is here: cross-entropy
training (with the run's label smoothing) and validation sums, the evaluate stage's metrics
(top-1, macro-F1, per-class accuracy, NLL, ECE, the confusion matrix), its report, and serving
(class probabilities for a float32 batch of images). A family re-exports these names::

    from components.tasks.image_classification import (PRIMARY_METRIC, PRIMARY_MODE, SELECT_BY, VAL_METRIC,
        VAL_MODE, eval_step, evaluate, predict, report, serving_example, signature, training_step, usage)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.evaluation.report import Report
from components.tasks.images import image_shape

PRIMARY_METRIC = "accuracy"  # test top-1; register compares it
PRIMARY_MODE = "max"
SELECT_BY = (("accuracy", "max"), ("nll", "min"))  # evaluate picks a candidate on val by these
VAL_METRIC = "val_accuracy"
VAL_MODE = "max"


def training_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], cfg: Any,
                  label_smoothing: float = 0.0, progress: float = 0.0) -> dict[str, torch.Tensor]:
    images, labels = batch
    logits = model(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    with torch.no_grad():
        correct = (logits.argmax(1) == labels).sum()
    return {"loss": loss, "correct": correct, "count": torch.tensor(labels.numel())}


@torch.no_grad()
def eval_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """Sums over a batch, so that workers can all-reduce them into exact means."""
    images, labels = batch
    logits = model(images)
    return {"loss": F.cross_entropy(logits, labels, reduction="sum"),
            "correct": (logits.argmax(1) == labels).sum(),
            "count": torch.tensor(labels.numel())}


def prepare_input(batch: Any, cfg: Any) -> torch.Tensor:
    """Validate a user's numpy batch for inference and return it as (N, C, H, W) float32.

    Accepted: (N, H, W) for one channel, or (N, C, H, W), floats scaled as in training ([0, 1]).
    """
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"expected a numpy array of images, got {type(batch).__name__}")
    if not np.issubdtype(batch.dtype, np.floating):
        raise TypeError(f"expected a float array (pixel values in [0, 1]), got dtype {batch.dtype}; "
                        f"convert with batch.astype(np.float32) / 16 for raw digits")
    s, c = cfg.image_size, cfg.in_channels
    if batch.ndim == 3 and c == 1:
        batch = batch[:, None]
    if batch.ndim != 4 or batch.shape[1:] != (c, s, s):
        want = f"(N, {s}, {s}) or (N, {c}, {s}, {s})" if c == 1 else f"(N, {c}, {s}, {s})"
        raise ValueError(f"expected images of shape {want}, got {tuple(batch.shape)}")
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


@torch.no_grad()
def predict(model: nn.Module, batch: np.ndarray, cfg: Any) -> np.ndarray:
    """Class probabilities (N, num_classes) for a numpy batch of images."""
    model.eval()
    return torch.softmax(model(prepare_input(batch, cfg)), dim=1).numpy()


def evaluate(model: nn.Module, cfg: Any, shard_dir, split: str, detail: bool = True) -> dict:
    """Top-1, macro-F1, per-class accuracy, NLL, ECE and the confusion matrix on a split."""
    from components.data.registry import open_split
    from components.evaluation.classification import classification_report

    probs, labels = [], []
    for x, y in open_split(shard_dir, split, batch_size=512):
        probs.append(predict(model, x.numpy(), cfg))
        labels.append(y.numpy())
    return classification_report(np.concatenate(probs), np.concatenate(labels))


def report(result: dict, title: str, name: str, where: str) -> Report:
    """Per-class accuracy as markdown; the confusion matrix as a figure."""
    from components.evaluation import plots

    figure = plots.confusion(np.array(result["confusion_matrix"]), f"{title}: test accuracy {result['accuracy']:.4f}")
    rows = "\n".join(f"| {c} | {a:.4f} |" for c, a in result["per_class_accuracy"].items())
    return Report(f"## {title}\n\naccuracy {result['accuracy']:.4f}, NLL {result['nll']:.4f}, ECE {result['ece']:.4f}"
                  f"\n\n| class | accuracy |\n|---|---|\n{rows}\n\nConfusion matrix: `{where}/confusion_{name}.png`\n",
                  {f"confusion_{name}.png": figure})


def serving_example(cfg: Any) -> np.ndarray:
    """What the pyfunc takes: (N, H, W) for one channel, else (N, C, H, W), float32."""
    shape = (2, cfg.image_size, cfg.image_size) if cfg.in_channels == 1 else \
        (2, cfg.in_channels, cfg.image_size, cfg.image_size)
    return np.zeros(shape, dtype=np.float32)


def signature(cfg: Any):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    shape = (-1, *serving_example(cfg).shape[1:])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, cfg.num_classes))]))


def usage(name: str, cfg: Any) -> str:
    return (f'`mlflow.pyfunc.load_model("models:/{name}@champion").predict(images)` with images a float32 array '
            f'{image_shape(cfg)} of pixel values in [0, 1]; returns class probabilities (N, {cfg.num_classes}).')
