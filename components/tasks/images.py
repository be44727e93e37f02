"""What the image tasks share: how images are shaped in and out of serving."""

from __future__ import annotations

from typing import Any


def image_shape(cfg: Any, n: str | int = "N") -> str:
    """How the family's images are shaped in and out of serving: ``(N, H, W)`` for one channel
    (sklearn's digits, MNIST), ``(N, C, H, W)`` otherwise, from the bound config."""
    side = f"{cfg.image_size}, {cfg.image_size}"
    return f"({n}, {side})" if cfg.in_channels == 1 else f"({n}, {cfg.in_channels}, {side})"
