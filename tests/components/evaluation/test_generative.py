"""The generative evaluator: metric formulas on known distributions, and the fitted feature
network on the real digits (its floor, its ceiling, real held-out images against noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.data import features
from components.data.registry import open_split
from components.data.shards import read_stats
from components.evaluation import generative, verdicts


def test_fid_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 4))
    b = rng.standard_normal((20000, 4)) * 2 + np.array([3.0, 0, 0, 0])
    # ||mu||^2 + tr(I + 4I - 2 * 2I) = 9 + 4 * (1 + 4 - 4) = 13
    assert generative.fid(a, b) == pytest.approx(13.0, rel=0.03)
    assert generative.fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_the_unbiased_mmd_over_every_pair_near_zero_for_one_distribution():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((250, 8))
    k = lambda x, y: (x @ y.T / 8 + 1) ** 3  # noqa: E731
    direct = ((k(a, a).sum() - np.trace(k(a, a))) / (300 * 299) + (k(b, b).sum() - np.trace(k(b, b))) / (250 * 249)
              - 2 * k(a, b).mean())
    assert generative.kid(a, b) == pytest.approx(direct, rel=1e-9)
    generative_block = generative.BLOCK
    try:  # blocks of rows change nothing but memory
        generative.BLOCK = 64
        assert generative.kid(a, b) == pytest.approx(direct, rel=1e-9)
    finally:
        generative.BLOCK = generative_block
    assert abs(generative.kid(a, b)) < 0.05 and generative.kid(a, b + 1.0) > 0.5


def test_kid_interval_from_halves_covers_the_true_value_and_a_paired_difference_is_named_only_when_real():
    rng = np.random.default_rng(3)
    truth = generative.kid(rng.standard_normal((4000, 4)) + 0.25, rng.standard_normal((4000, 4)))
    inside = 0
    for _ in range(40):
        fake, real = rng.standard_normal((200, 4)) + 0.25, rng.standard_normal((200, 4))
        r = generative.kid_interval(fake, real, draws=100, seed=int(rng.integers(1 << 30)))
        assert r["kid_low"] < r["kid"] < r["kid_high"]
        inside += r["kid_low"] <= truth <= r["kid_high"]
    assert inside >= 34  # a 95% interval: 38 of 40 expected; half-sampling errs on the wide side
    real = rng.standard_normal((300, 4))
    reference = rng.standard_normal((300, 4))  # real images of the same distribution
    as_good = generative.kid_interval(rng.standard_normal((300, 4)), real, 100, 0, reference=reference)
    worse = generative.kid_interval(rng.standard_normal((300, 4)) + 0.5, real, 100, 0, reference=reference)
    assert as_good["kid_minus_reference_low"] <= 0 <= as_good["kid_minus_reference_high"]
    assert worse["kid_minus_reference_low"] > 0
    words = verdicts.difference("KID", worse["kid_minus_reference"], worse["kid_minus_reference_low"],
                                worse["kid_minus_reference_high"], True, "the samples", "real images", plural=True)
    assert "excludes zero" in words and "the samples fall short of real images" in words
    words = verdicts.difference("KID", as_good["kid_minus_reference"], as_good["kid_minus_reference_low"],
                                as_good["kid_minus_reference_high"], True, "the samples", "real images")
    assert "includes zero" in words and "beat" not in words


def test_compare_pairs_every_model_on_the_same_held_out_halves():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((300, 4))
    features = {"good": rng.standard_normal((300, 4)), "also_good": rng.standard_normal((300, 4)),
                "shifted": rng.standard_normal((300, 4)) + 0.5}
    out = generative.compare(features, real, draws=100, seed=0)
    assert list(out["pairs"]) == ["good_minus_also_good", "good_minus_shifted", "also_good_minus_shifted"]
    for name, value in out["kid"].items():
        assert value == pytest.approx(generative.kid(features[name], real), rel=1e-9, abs=1e-12)
    same, worse = out["pairs"]["good_minus_also_good"], out["pairs"]["good_minus_shifted"]
    assert same["low"] <= 0 <= same["high"]
    assert worse["high"] < 0 and worse["difference"] == pytest.approx(out["kid"]["good"] - out["kid"]["shifted"])


def test_memorisation_tells_a_copier_from_a_generator():
    rng = np.random.default_rng(4)
    train, heldout = rng.standard_normal((1000, 6)), rng.standard_normal((300, 6))
    fresh = generative.memorisation(rng.standard_normal((300, 6)), heldout, train)
    copies = generative.memorisation(train[rng.choice(1000, 300, replace=False)] + 0.05 * rng.standard_normal((300, 6)),
                                     heldout, train)
    assert abs(fresh["memorisation_z"]) < 3 and fresh["near_copies"] < 0.15
    assert copies["memorisation_z"] < verdicts.COPY_Z and copies["near_copies"] > 0.9
    assert "COPY" in verdicts.memorisation(copies["memorisation_z"], copies["near_copies"], copies["nn_distance_ratio"])


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
                                                        open_split(digits_shards, s, batch_size=512)]))
              for s in ("train", "val", "test")}
    cfg = features.FeatureConfig(**meta["config"])
    again = features.fit(cfg, {"train": splits["train"], "test": splits["test"]}, 10, tmp_path / "again")
    other = features.fit(cfg, {"train": splits["train"], "test": splits["test"]}, 10, tmp_path / "other")
    assert again["sha256"] == other["sha256"]


def test_real_held_out_images_score_at_the_floor_and_noise_far_above_it(evaluator, digits_shards):
    val = np.concatenate([x.numpy() for x, _ in open_split(digits_shards, "val", batch_size=512)])
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


def test_on_real_digits_replayed_training_images_fail_the_memorisation_test_and_held_out_ones_pass(
        evaluator, digits_shards):
    """The evaluate stage's detail on the real feature network: a "generator" that replays training
    images with a little noise is caught; real images it never saw are not, and are as close to
    the held-out images by KID as real training images are (the paired interval holds zero)."""
    n = evaluator.num_samples("test")
    val = np.concatenate([x.numpy() for x, _ in open_split(digits_shards, "val", batch_size=512)])[:n]
    train = np.concatenate([x.numpy() for x, _ in open_split(digits_shards, "train", batch_size=512)])
    rng = np.random.default_rng(0)
    replayed = np.clip(train[rng.choice(len(train), n, replace=False)] + 0.02 * rng.standard_normal((n, *train.shape[1:])),
                       0, 1).astype(np.float32)
    copier = evaluator.score(replayed, "test", detail=True)
    real = evaluator.score(val, "test", detail=True)
    assert copier["memorisation_z"] < verdicts.COPY_Z, copier["memorisation_z"]
    assert real["memorisation_z"] > verdicts.COPY_Z and real["near_copies"] < 0.2
    assert real["kid_minus_real_low"] <= 0 <= real["kid_minus_real_high"]
    assert real["kid_low"] < real["kid"] < real["kid_high"]
    assert "no sign of copying" in generative.table({**real, **{f"{m}_{s}": 0.0 for m in generative.METRICS
                                                              for s in ("floor", "floor_std", "ceiling")}}).lower()
