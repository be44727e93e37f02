"""The generative evaluator: metric formulas on known distributions, and the fitted feature
network on the real digits (its floor, its ceiling, real held-out images against noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.data import features
from components.data.shards import ShardDataset, read_stats
from components.evaluation import generative


def test_fid_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 4))
    b = rng.standard_normal((20000, 4)) * 2 + np.array([3.0, 0, 0, 0])
    # ||mu||^2 + tr(I + 4I - 2 * 2I) = 9 + 4 * (1 + 4 - 4) = 13
    assert generative.fid(a, b) == pytest.approx(13.0, rel=0.03)
    assert generative.fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    same, _ = generative.kid(a, b, subsets=20, subset_size=100)
    shifted, _ = generative.kid(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05 and shifted > 10 * max(abs(same), 0.01)


def test_precision_recall_density_coverage_on_identical_and_disjoint_sets():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((300, 5))
    same = generative.prdc(real, real.copy(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = generative.prdc(real, real + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # samples collapsed on one real point: precise, but they cover almost nothing (mode collapse)
    collapsed = generative.prdc(real, np.repeat(real[:1], 300, axis=0), k=5)
    assert collapsed["precision"] == 1.0 and collapsed["coverage"] < 0.05 and collapsed["recall"] < 0.05


def test_class_metrics_count_covered_classes_and_accuracy():
    probs = np.eye(10)[np.array([0] * 50 + [1] * 50)]
    out = generative.class_metrics(probs, np.array([0] * 50 + [2] * 50), 10)
    assert out["classes_covered"] == 2 and out["class_accuracy"] == 0.5
    assert out["class_balance"] == pytest.approx(np.log(2) / np.log(10))


@pytest.fixture(scope="module")
def evaluator(digits_shards):
    return generative.Evaluator(digits_shards / "evaluator")


def test_preprocess_fits_the_feature_network_deterministically_and_records_it(digits_shards, tmp_path):
    stats = read_stats(digits_shards)
    meta = json.loads((digits_shards / "evaluator" / features.CONFIG).read_text())
    assert stats["evaluator"]["accuracy"]["test"] > 0.95  # a useful embedding of digits
    assert meta["accuracy"] == stats["evaluator"]["accuracy"]
    # same data, same config -> the same weights, bit for bit
    splits = {s: tuple(np.concatenate(a) for a in zip(*[(x.numpy(), y.numpy()) for x, y in
                                                        ShardDataset(digits_shards, s, batch_size=512)]))
              for s in ("train", "val", "test")}
    cfg = features.FeatureConfig(**meta["config"])
    again = features.fit(cfg, {"train": splits["train"], "test": splits["test"]}, 10, tmp_path / "again")
    other = features.fit(cfg, {"train": splits["train"], "test": splits["test"]}, 10, tmp_path / "other")
    assert again["sha256"] == other["sha256"]


def test_real_held_out_images_score_at_the_floor_and_noise_far_above_it(evaluator, digits_shards):
    val = np.concatenate([x.numpy() for x, _ in ShardDataset(digits_shards, "val", batch_size=512)])
    n = evaluator.num_samples("test")
    assert len(val) >= n  # val and test are equal-sized stratified splits
    real = evaluator.score(val[:n], "test")
    bounds = evaluator.bounds("test")
    floor, spread, ceiling = bounds["floor"]["fid"], bounds["floor_std"]["fid"], bounds["ceiling"]["fid"]
    assert ceiling > 20 * floor  # the range means something
    assert real["fid"] < floor + 3 * spread  # real digits the network never saw: at the floor
    assert real["precision"] > 0.8 and real["coverage"] > 0.8
    noise = evaluator.score(np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32), "test")
    assert noise["fid"] > 10 * floor and noise["coverage"] < 0.2


def test_score_refuses_a_sample_count_other_than_the_split_size(evaluator):
    with pytest.raises(ValueError, match="num_samples"):
        evaluator.score(np.zeros((5, 1, 8, 8), np.float32), "test")
