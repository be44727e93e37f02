"""The registry of algorithm families: one explicit dict from name to module.

Each module exports the same contract: ``Config`` (its ``train.<name>.model`` section),
``build(cfg)``, ``training_step``, ``eval_step``, ``example_input``, ``predict``, and
``PRIMARY_METRIC`` / ``PRIMARY_MODE`` (the metric ``register`` compares and its direction).
"""

from __future__ import annotations

from types import ModuleType

from components.config import ConfigError
from components.models import resnet

FAMILIES: dict[str, ModuleType] = {
    "resnet": resnet,
}


def get_family(name: str, path: str = "algorithm") -> ModuleType:
    """The family module registered as ``name``; an unknown name lists the valid ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"{path}: unknown algorithm {name!r}; valid: {sorted(FAMILIES)}") from None
