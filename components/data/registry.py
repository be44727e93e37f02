"""The registry of datasets: one explicit dict from a dataset type to its module.

A ``data.<name>`` section is of type ``<name>`` unless it says ``type: <module>``, so one
module can serve several datasets (``graphs``: a community graph, karate club, graph families).

Each module meets the dataset contract, :class:`components.data.contract.Dataset`, checked
by :func:`get_dataset` when the module is loaded: ``Config`` (its ``data.<name>`` section),
``ingest(cfg, out_dir) -> manifest`` (raw files, a fixed split, checksums),
``preprocess(cfg, raw_dir, out_dir, manifest) -> stats`` (WebDataset shards per split,
``stats.json`` and any assets such as a tokenizer, fitted on the train split only) and
``batcher(stats, shard_dir, options)`` (how the reader turns its samples into batches).

:func:`open_split` reads a split of shards batched by the module that wrote them: the reader
(``components/data/shards.py``) knows no data type, and no dataset module's code is in its closure.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from components.config import ConfigError
from components.conformance import load_checked
from components.data import contract

# Name -> module, imported when asked for: a stage loads only the dataset module it runs.
DATASETS: dict[str, str] = {
    "images": "components.data.images",
    "translation": "components.data.translation",
    "graphs": "components.data.graphs",
    "captions": "components.data.captions",
}


def get_dataset(name: str, path: str = "dataset") -> ModuleType:
    """The dataset module registered as ``name``; an unknown name lists the valid ones."""
    try:
        module = DATASETS[name]
    except KeyError:
        raise ConfigError(f"{path}: unknown dataset {name!r}; valid: {sorted(DATASETS)}") from None
    return load_checked(module, name, contract.check)


def writer_batcher(stats: dict, shard_dir: Path, options: Any):
    """The batcher that the dataset module named by ``stats["dataset"]`` (the shards' writer) makes
    for ``options``; for shards of any other writer, the reader's default (fields collated as read)."""
    from components.data.shards import Batcher

    name = stats.get("dataset")
    return get_dataset(name).batcher(stats, Path(shard_dir), options) if name in DATASETS else Batcher()


def open_split(shard_dir: str | Path, split: str, **options: Any):
    """Split ``split`` of the shards in ``shard_dir`` as a ``ShardDataset`` (``options``: its
    keyword arguments), batched by the dataset module that wrote them (:func:`writer_batcher`)."""
    from components.data.shards import ShardDataset  # torch and webdataset: only where data is read

    return ShardDataset(shard_dir, split, make_batcher=writer_batcher, **options)
