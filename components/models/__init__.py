"""The registry of algorithm families: one explicit dict from name to module.

Each module meets the family contract, :class:`components.models.contract.Family` (its data
fields and functions, the optional ones, and how the pipeline calls each), checked by
:func:`get_family` when the module is loaded.
"""

from __future__ import annotations

from types import ModuleType

from components.config import ConfigError
from components.conformance import load_checked
from components.models import contract

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
    "vgg": "components.models.vgg",  # no default algorithm: docs/pipeline.md's worked example of a new family
}


def get_family(name: str, path: str = "algorithm") -> ModuleType:
    """The family module registered as ``name``; an unknown name lists the families.
    ``path`` is the params key that named it (``algorithms.<algo>.family``, ``algorithms.<algo>``)."""
    try:
        module = FAMILIES[name]
    except KeyError:
        raise ConfigError(f"{path}: unknown family {name!r}; families: {sorted(FAMILIES)}") from None
    return load_checked(module, name, contract.check)
