"""Classification metrics on class probabilities (components/evaluation/classification.py)."""

import numpy as np
import pytest

from components.evaluation.classification import classification_report


def test_the_report_counts_every_class_a_small_or_absent_one_as_much_as_a_large_one():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    probs = np.full((5, 4), 0.1)
    probs[np.arange(5), preds] = 0.7  # confidence 0.7 everywhere, 3 of 5 right
    out = classification_report(probs, labels)
    assert out["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # F1 per class: 2/4, 4/5, 0 (never predicted right), 0 (class 3 is absent): the mean over all four
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8) / 4)
    assert out["accuracy"] == pytest.approx(0.6) and out["min_class_accuracy"] == 0.0
    assert out["per_class_accuracy"] == {"0": 0.5, "1": 1.0, "2": 0.0, "3": 0.0}
    assert out["nll"] == pytest.approx(-(3 * np.log(0.7) + 2 * np.log(0.1)) / 5)
    assert out["ece"] == pytest.approx(abs(0.6 - 0.7))  # one confidence bin
