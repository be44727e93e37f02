"""Classification metrics on predicted class probabilities.

Macro-F1: the unweighted mean over all classes of F1 = 2·precision·recall / (precision + recall),
so a small class counts as much as a large one (0 for a class never predicted correctly, and
for a class absent from the split); scikit-learn computes it and the confusion matrix.

Expected calibration error (Guo et al. 2017): ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|
over ``n_bins`` equal-width confidence bins.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix as counts
from sklearn.metrics import f1_score


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predictions."""
    return counts(labels, preds, labels=np.arange(num_classes))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def classification_report(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 accuracy, macro-F1, per-class accuracy, NLL, ECE and the confusion matrix."""
    num_classes = probs.shape[1]
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, num_classes)
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return {
        "accuracy": float((preds == labels).mean()),
        "macro_f1": float(f1_score(labels, preds, labels=np.arange(num_classes), average="macro", zero_division=0)),
        "per_class_accuracy": {str(c): float(a) for c, a in enumerate(per_class)},
        "min_class_accuracy": float(per_class.min()),
        "nll": nll,
        "ece": expected_calibration_error(probs, labels),
        "num_samples": int(len(labels)),
        "confusion_matrix": cm.tolist(),
    }
