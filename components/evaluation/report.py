"""What an evaluate report is made of: the family (or its task) computes it, the evaluate stage writes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Report:
    """What a family's ``report`` gives the evaluate stage, which writes it: a markdown section,
    and figures (matplotlib) by file name, ``<what>_<name>.png`` for the candidate ``name``."""

    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)
