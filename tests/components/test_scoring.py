"""Batch scoring's reading side on real shards (the Ray Data run itself is in the e2e tests,
against a registered model)."""

from __future__ import annotations

import numpy as np
import pytest

from components import scoring
from components.data.manifest import DataError
from components.data.registry import open_split
from components.data.shards import read_stats
from tests.conftest import numbered_shards


def test_read_shards_yields_the_samples_evaluation_reads_in_its_order(digits_shards):
    items = scoring.shard_items(digits_shards, "test")
    columns = {k: np.array([item[k] for item in items]) for k in items[0]}  # a Ray Data batch of items
    stats = read_stats(digits_shards)
    out = scoring.read_shards(columns, stats["image"], stats["fields"])
    expected = list(open_split(digits_shards, "test", uint8_images=True))
    assert out["image"].dtype == np.uint8 and out["image"].shape == (len(expected), 1, 8, 8)
    assert np.array_equal(out["image"], np.stack([x.numpy() for x, _ in expected]))
    assert out["label"].tolist() == [int(y) for _, y in expected]
    assert len(set(out["key"])) == len(expected) == stats["splits"]["test"]["samples"]
    assert set(out["shard"]) == {item["path"].rsplit("/", 1)[1] for item in items}


def test_shards_without_images_or_the_split_are_named(tmp_path, digits_shards):
    with pytest.raises(DataError, match="holds no images"):
        scoring.shard_items(numbered_shards(tmp_path / "numbers", 10, 5), "train")
    with pytest.raises(DataError, match="no split 'holdout'"):
        scoring.shard_items(digits_shards, "holdout")


def test_families_batch_scoring_does_not_cover_are_named():
    assert scoring.task_of("resnet") == "classify" and scoring.task_of("clip") == "embed"
    with pytest.raises(DataError, match="'gan' is not one of them"):
        scoring.task_of("gan")


def test_a_uri_outside_the_registry_is_not_resolved():
    assert scoring.resolve_version("runs:/0123/model") is None
