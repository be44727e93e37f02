"""The registry of algorithm families: one explicit dict from name to module.

Each module exports the same contract:

- ``Config`` (its ``train.<name>.model`` section) and ``bind(cfg, stats, data_dir)``, which
  fills or checks data-derived fields (a tokenizer, the class count) before ``build(cfg)``;
- ``training_step`` and ``eval_step`` for the shared training loop;
- ``evaluate(model, cfg, shard_dir, split, detail=True) -> dict`` and ``report(result, title,
  plot_dir, name) -> markdown`` for the evaluate stage, which selects a candidate on val by
  ``SELECT_BY`` and asks for ``detail`` (costly extras) on test for the selected one only;
- optionally ``loader_options(cfg, world_size) -> dict``: extra ``ShardDataset`` arguments
  for the train split (the GNN's neighbour fanout on several workers);
- optionally ``Step`` (its own optimisation step, see ``components/training/steps.py``) and
  ``validate(model, cfg, data_dir) -> dict`` (a per-epoch val metric that is not a sum over
  batches, such as FID);
- ``predict``, ``signature``, ``serving_example``, ``usage`` and ``PAPER`` for the registry;
- ``PRIMARY_METRIC`` / ``PRIMARY_MODE``: the test metric ``register`` compares, and its direction;
- ``VAL_METRIC`` / ``VAL_MODE``: the per-epoch metric tune's early stopping compares.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from components.config import ConfigError

# Name -> module. A family is imported when it is asked for, so a stage loads only its own
# (the GNN's torch-geometric alone costs a second or two of start-up in every other stage).
FAMILIES: dict[str, str] = {
    "resnet": "components.models.resnet",
    "transformer": "components.models.transformer",
    "gan": "components.models.gan",
    "vae": "components.models.vae",
    "diffusion": "components.models.diffusion",
    "gnn": "components.models.gnn",
    "clip": "components.models.clip",
}


def get_family(name: str, path: str = "algorithm") -> ModuleType:
    """The family module registered as ``name``; an unknown name lists the valid ones."""
    try:
        module = FAMILIES[name]
    except KeyError:
        raise ConfigError(f"{path}: unknown algorithm {name!r}; valid: {sorted(FAMILIES)}") from None
    return importlib.import_module(module)
