"""What the family and dataset registries share: loading a module once checked against its
contract, and whether a module's functions take the pipeline's calls."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from types import ModuleType

_CHECKED: set[str] = set()


def load_checked(module: str, name: str, check: Callable[[ModuleType, str], None]) -> ModuleType:
    """Import ``module`` (registered as ``name``) and hold it to its contract with ``check`` the
    first time it is loaded in this process."""
    loaded = importlib.import_module(module)
    if module not in _CHECKED:
        check(loaded, name)
        _CHECKED.add(module)
    return loaded


def call_problems(module: ModuleType, calls: dict[str, tuple[tuple, dict]]) -> list[str]:
    """One line for each function of ``module`` named in ``calls`` (name -> placeholder args and
    kwargs of how the pipeline calls it) that cannot take that call; absent ones are not checked."""
    out = []
    for name, (args, kwargs) in calls.items():
        fn = getattr(module, name, None)
        if fn is None:
            continue
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as exc:
            params = ", ".join(inspect.signature(fn).parameters)
            shape = ", ".join([f"arg{i}" for i in range(len(args))] + [f"{k}=" for k in kwargs])
            out.append(f"{name}({params}) cannot take the pipeline's call {name}({shape}): {exc}")
    return out
