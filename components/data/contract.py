"""The dataset contract: what a module registered in ``DATASETS`` exports, checked when it loads.

As for families (``components/models/contract.py``): :class:`Dataset` is the contract as a
Protocol, for readers and type checkers; :func:`check` holds a module to it when
:func:`components.data.registry.get_dataset` loads it, so a dataset module that forgets a piece, or takes
other arguments than the pipeline passes, fails at once naming it instead of deep in a stage;
``tests/components/data/test_dataset_contract.py`` runs every registered module through the contract
end to end on tiny data: ingest -> preprocess -> the reader with the module's batcher.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Protocol

from components.conformance import call_problems


class Dataset(Protocol):
    """One dataset module; one module may serve several ``data.<name>`` sections (``type:``)."""

    Config: ClassVar[type]  # the ``data.<name>`` section, a dataclass (``type`` is the registry's key, not its)

    def ingest(self, cfg: Any, out_dir: Path) -> dict:
        """Raw files under ``out_dir`` with a fixed split; returns the manifest (checksums, split
        sizes, ``"dataset"``: the module's registry name), which the stage writes as ``manifest.json``."""

    def preprocess(self, cfg: Any, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
        """WebDataset shards per split under ``out_dir`` (``components/data/writer.py``), and
        any assets fitted on the train split only (a tokenizer); writes ``stats.json`` and
        returns it, with ``"dataset"``: the module's registry name, by which the shard reader finds
        :func:`batcher`."""

    def batcher(self, stats: dict, shard_dir: Path, options: Any) -> Any:
        """How a sample of these shards becomes what a model takes (``components.data.shards.Batcher``:
        decode, batch, on_device...), for the reader's ``BatchOptions``. Picklable: it runs in
        loader workers."""


# How the pipeline calls each function (placeholder arguments): a module's function must accept it.
CALLS: dict[str, tuple[tuple, dict]] = {
    "ingest": ((0, 0), {}),
    "preprocess": ((0, 0, 0, 0), {}),
    "batcher": ((0, 0, 0), {}),
}
REQUIRED = ("Config", "ingest", "preprocess", "batcher")


def problems(module: ModuleType) -> list[str]:
    """What ``module`` lacks or gets wrong of the contract, one line each (empty: it conforms)."""
    out = [f"lacks {name}" for name in REQUIRED if not hasattr(module, name)]
    config = getattr(module, "Config", None)
    if config is not None and not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        out.append(f"Config is {config!r}, not a dataclass (the data.<name> section is parsed into it)")
    return out + call_problems(module, CALLS)


def check(module: ModuleType, name: str) -> None:
    """Raise TypeError naming everything ``module`` (registered as ``name``) gets wrong of the contract."""
    found = problems(module)
    if found:
        raise TypeError(f"dataset module {name!r} ({module.__name__}) does not meet the dataset contract "
                        f"(components/data/contract.py): " + "; ".join(found))
