"""params.yaml as the stages read it: the whole file validated, and each section parsed into its
typed config, including the sections that only a family or dataset module can parse.

``components/config.py`` holds the dataclasses and the parser and imports no project module;
this module is the one that knows the registries (``components/models``, ``components/data``),
so no module that a family or dataset imports needs it, and the import graph has no circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from components.config import (
    ConfigError,
    RegisterConfig,
    RuntimeConfig,
    TrainConfig,
    TuneConfig,
    parse,
)
from components.data.registry import get_dataset
from components.models import FAMILIES, get_family


@dataclass
class Algorithm:
    """``algorithms.<name>``: which model family (a module of ``components/models``) trains on
    which dataset (a section of ``data``). One family may serve several algorithms: ``gnn`` on a
    community graph, ``gnn_graphs`` (family gnn) on graph classification."""
    dataset: str
    family: str = ""  # "" = the algorithm's own name; dvc.yaml reads it, so params.yaml spells it out


@dataclass
class Params:
    """The whole of ``params.yaml``."""
    algorithms: dict[str, Algorithm]
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, Any] = field(default_factory=dict)
    register: RegisterConfig = field(default_factory=RegisterConfig)


@dataclass(frozen=True)
class AlgorithmParams:
    """What a stage of ``algorithms.<name>`` reads of params.yaml, parsed and validated. A stage
    gets only the keys dvc.yaml lists for it (``stage_keys``); a section it does not read is None."""
    name: str
    family: str  # its model family (a module of components/models)
    dataset: str  # the data section it trains on
    train: TrainConfig | None  # train.<name>, its model section parsed by the family
    tune: TuneConfig | None
    runtime: RuntimeConfig
    register: RegisterConfig
    raw: dict[str, Any]  # the whole file: only for the stage's code deps (pipelines/dag.py), which dvc.yaml holds


@dataclass(frozen=True)
class DatasetParams:
    """What the data stages of ``data.<name>`` read of params.yaml."""
    name: str
    module: ModuleType  # its dataset module (a module of components/data)
    config: Any  # data.<name>, parsed into the module's Config
    raw: dict[str, Any]


# train.<algo> keys no tune trial reads (pipelines/tune.py fixes them): the tune stage does not depend on them.
TRAIN_ONLY = ("epochs", "checkpoint_every", "val_every", "num_workers", "tuned")
# Says where and how a stage runs, not what it computes: every stage reads it and none depends on it,
# so moving the storage root never retrains a model.
UNTRACKED = ("runtime",)


def stage_keys(stage: str, raw: dict[str, Any], name: str) -> list[str]:
    """The params.yaml keys that stage ``stage`` of dataset or algorithm ``name`` reads: its
    ``params`` in dvc.yaml, and (with ``UNTRACKED``) all that ``view`` hands the stage, so that
    a key the stage reads and DVC does not see cannot exist."""
    if stage in ("ingest", "preprocess"):
        return [f"data.{name}"]
    algo = [f"algorithms.{name}"]
    if stage == "tune":
        train = (raw.get("train") or {}).get(name) or {}
        return [*algo, f"tune.{name}", *(f"train.{name}.{k}" for k in train if k not in TRAIN_ONLY)]
    if stage == "train":
        return [*algo, f"train.{name}"]
    if stage == "evaluate":  # the trained model's config is in its checkpoint
        return algo
    if stage == "register":
        return [*algo, "register"]
    if stage == "compare":  # name: a dataset
        return [f"algorithms.{a}" for a in image_generators(raw, name)]
    raise ValueError(f"no stage {stage!r}; stages: ingest, preprocess, tune, train, evaluate, register")


def image_generators(raw: dict[str, Any], dataset: str) -> list[str]:
    """The algorithms on ``dataset`` whose family generates images (``GENERATES = "images"``), in
    params.yaml's order: the compare stage's models."""
    return [a for a, entry in (raw.get("algorithms") or {}).items()
            if isinstance(entry, dict) and entry.get("dataset") == dataset
            and getattr(get_family(family_name(raw, a), path=f"algorithms.{a}.family"), "GENERATES", None) == "images"]


def view(raw: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The part of ``raw`` under ``keys`` (dotted paths) and the ``UNTRACKED`` sections, nested as in the file."""
    out: dict[str, Any] = {k: raw[k] for k in UNTRACKED if k in raw}
    for key in keys:
        *parents, last = key.split(".")
        src, dst = raw, out
        for part in parents:
            src = src.get(part) if isinstance(src, dict) else None
            dst = dst.setdefault(part, {})
        if isinstance(src, dict) and last in src:
            dst[last] = src[last]
    return out


def algorithm(raw: dict[str, Any], name: str, stage: str | None = None) -> AlgorithmParams:
    """``algorithms.<name>`` and every section its stages read, parsed; with ``stage``, only what
    that stage reads (``stage_keys``), the rest None or its default."""
    if stage is None:
        return AlgorithmParams(name, family_name(raw, name), dataset_name(raw, name), train_config(raw, name),
                               tune_config(raw, name), runtime_config(raw),
                               parse(RegisterConfig, raw.get("register"), "register"), raw)
    seen = view(raw, stage_keys(stage, raw, name))
    for section, stages in (("train", ("tune", "train")), ("tune", ("tune",))):
        if stage in stages:  # read, if only in part (tune reads no TRAIN_ONLY key): present, maybe empty
            seen.setdefault(section, {}).setdefault(name, {})
    return AlgorithmParams(name, family_name(seen, name), dataset_name(seen, name),
                           train_config(seen, name) if "train" in seen else None,
                           tune_config(seen, name) if "tune" in seen else None, runtime_config(seen),
                           parse(RegisterConfig, seen.get("register"), "register"), raw)


def dataset(raw: dict[str, Any], name: str) -> DatasetParams:
    """``data.<name>``, parsed by its dataset module."""
    seen = view(raw, stage_keys("ingest", raw, name))
    return DatasetParams(name, dataset_module(seen, name), dataset_config(seen, name), raw)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as plain data; a YAML syntax error names the file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    return data


def load_all(raw: dict[str, Any], algorithms: list[str] | None = None, datasets: list[str] | None = None) -> Params:
    """Validate params.yaml: its structure, and the sections of ``algorithms`` and ``datasets``
    in full (default: every one, so a typo anywhere fails before any work).

    A full check imports every family and dataset module to parse their sections (seconds of
    start-up), so a stage checks the whole file's shape and in full only what it reads; the
    first stage of every cold ``dvc repro`` (ingest) checks everything.
    """
    params = parse(Params, raw, "params")
    for name, algo in params.algorithms.items():
        if algo.dataset not in params.data:
            raise ConfigError(f"data.{algo.dataset}: algorithms.{name} uses it but the section is missing")
        if algorithms is not None and name not in algorithms:
            continue
        if not algo.family and name not in FAMILIES:  # an algorithm named otherwise says which family it is
            raise ConfigError(f"algorithms.{name}: {name!r} is no family, so the entry needs `family:` (one of "
                              f"{sorted(FAMILIES)}), as algorithms.gnn_graphs has `family: gnn`")
        get_family(family_name(raw, name), path=f"algorithms.{name}.family")
        train_config(raw, name)
        tune_config(raw, name)
    for name in params.data:
        if datasets is None or name in datasets:
            dataset_config(raw, name)
    return params


def dataset_module(raw: dict[str, Any], name: str):
    """The dataset module of ``data.<name>``: its ``type`` key, else the section's own name
    (``data.community: {type: graphs, source: sbm}`` and ``data.karate: {type: graphs, ...}``
    are two datasets of one module)."""
    section = (raw.get("data") or {}).get(name) or {}
    kind = section.get("type", name) if isinstance(section, dict) else name
    return get_dataset(kind, f"data.{name}" + (".type" if kind != name else ""))


def dataset_config(raw: dict[str, Any], name: str) -> Any:
    """``data.<name>`` parsed into its dataset module's Config."""
    section = (raw.get("data") or {}).get(name)
    if isinstance(section, dict):
        section = {k: v for k, v in section.items() if k != "type"}
    return parse(dataset_module(raw, name).Config, section, f"data.{name}")


def dataset_name(raw: dict[str, Any], algo: str) -> str:
    """The dataset (a ``data`` section) that ``algorithms.<algo>`` trains on."""
    entry = (raw.get("algorithms") or {}).get(algo)
    if not isinstance(entry, dict) or not entry.get("dataset"):
        raise ConfigError(f"algorithms.{algo}.dataset: missing; name the data section it trains on")
    return entry["dataset"]


def family_name(raw: dict[str, Any], algo: str) -> str:
    """The model family of ``algorithms.<algo>`` (its ``family`` key, else its own name)."""
    entry = (raw.get("algorithms") or {}).get(algo)
    return (entry.get("family") if isinstance(entry, dict) else None) or algo


def train_config(raw: dict[str, Any], algo: str) -> TrainConfig:
    """``train.<algo>`` with its ``model`` subsection parsed into the family's Config."""
    section = (raw.get("train") or {}).get(algo)
    if section is None:
        raise ConfigError(f"train.{algo}: section is missing from params.yaml")
    cfg = parse(TrainConfig, section, f"train.{algo}")
    family = get_family(family_name(raw, algo), path=f"train.{algo}")
    cfg.model = parse(family.Config, section.get("model"), f"train.{algo}.model")
    return cfg


def tune_config(raw: dict[str, Any], algo: str) -> TuneConfig:
    section = (raw.get("tune") or {}).get(algo)
    if section is None:
        raise ConfigError(f"tune.{algo}: section is missing from params.yaml")
    return parse(TuneConfig, section, f"tune.{algo}")


def runtime_config(raw: dict[str, Any]) -> RuntimeConfig:
    return parse(RuntimeConfig, raw.get("runtime"), "runtime")


def train_config_from_dict(family: str, data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig of model family ``family`` from its ``to_dict`` form (checkpoints, Ray configs)."""
    return train_config({"train": {family: data}}, family)
