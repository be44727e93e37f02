"""The dataset contract (components/data/contract.py): every registered dataset module meets it, a
module that forgets a piece is named with what it forgot, and every module runs through the whole
contract on tiny data: ingest -> preprocess -> the shard reader, with the module's own batcher."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from components.data import captions, contract, graphs, images, registry, translation
from components.data.registry import get_dataset, open_split
from components.data.shards import Batcher, ShardDataset


def test_every_registered_dataset_module_meets_the_contract():
    for name in registry.DATASETS:
        assert contract.problems(get_dataset(name)) == [], name


def test_a_dataset_module_that_forgets_a_piece_is_named_with_it(monkeypatch):
    @dataclass
    class Config:
        seed: int = 0

    module = types.ModuleType("throwaway_dataset")
    module.Config = Config
    module.ingest = lambda cfg, out_dir: {}
    module.preprocess = lambda cfg, raw_dir, out_dir: {}  # one argument short: no manifest
    monkeypatch.setitem(sys.modules, "throwaway_dataset", module)
    monkeypatch.setitem(registry.DATASETS, "throwaway", "throwaway_dataset")
    with pytest.raises(TypeError) as err:
        get_dataset("throwaway")
    assert "lacks batcher" in str(err.value) and "preprocess(cfg, raw_dir, out_dir) cannot take" in str(err.value)
    module.Config = {"seed": 0}
    assert any("not a dataclass" in p for p in contract.problems(module))


# One tiny configuration per registered module: each covers the module's own sample kind.
TINY = {
    "images": images.Config(samples_per_shard=256, fit_evaluator=False),
    "translation": translation.Config(num_train=300, num_val=40, num_test=40, max_digits=4, vocab_size=60,
                                      samples_per_shard=100),
    "graphs": graphs.Config(source="sbm", samples_per_shard=50,
                            sbm=graphs.SBMConfig(num_nodes=200, communities=4, feature_dim=8)),
    "captions": captions.Config(captions_per_image=1, vocab_size=60, samples_per_shard=256),
}


def test_the_tiny_configs_cover_every_registered_module():
    assert set(TINY) == set(registry.DATASETS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_dataset_module_runs_through_the_whole_contract_on_tiny_data(name, tmp_path):
    module, cfg = get_dataset(name), TINY[name]
    manifest = module.ingest(cfg, tmp_path / "raw")
    assert manifest["dataset"] == name  # what the manifest says wrote it
    stats = module.preprocess(cfg, tmp_path / "raw", tmp_path / "shards", manifest)
    written = json.loads((tmp_path / "shards" / "stats.json").read_text())
    assert stats["dataset"] == written["dataset"] == name  # how the reader finds this module's batcher
    for split in ("train", "val", "test"):
        assert sorted((tmp_path / "shards").glob(f"{split}-*.tar*")), f"{name}: no {split} shards"
    # The reader alone knows no data type: it collates the fields as read; open_split hands it the
    # batcher of the module that wrote the shards.
    assert type(ShardDataset(tmp_path / "shards", "train", batch_size=16).batcher) is Batcher
    reader = open_split(tmp_path / "shards", "train", batch_size=16, shuffle=True)
    assert type(reader.batcher) is not Batcher, "the reader fell back to the default batcher"
    batch = reader.batcher.on_device(next(iter(reader)))
    assert isinstance(batch, tuple) and batch and all(
        isinstance(x, torch.Tensor) or isinstance(x, list) for x in batch), [type(x) for x in batch]
    assert all(len(x) > 0 for x in batch), f"{name}: an empty field in {[getattr(x, 'shape', len(x)) for x in batch]}"
