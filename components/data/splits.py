"""The fixed, seeded, class-stratified split every labelled dataset uses (digits, captions, graphs)."""

from __future__ import annotations

import numpy as np

from components.data.manifest import DataError

SPLITS = ("train", "val", "test")  # every dataset's splits, in this order


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Per-class shuffled split; every class is in every split in its overall proportion, with at
    least one sample of each class in val and test (a 4-node class of the karate club)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = max(1, round(len(idx) * test_fraction)), max(1, round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    split = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    if not all(len(v) for v in split.values()):
        raise DataError(f"too few samples for a train/val/test split: sizes {({k: len(v) for k, v in split.items()})}")
    return split
