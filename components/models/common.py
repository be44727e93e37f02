"""Pieces shared by the image families: the data checks (ResNet, GAN, VAE, diffusion), the EMA
of the generators' weights. Task code (serving, evaluation) is in ``components/tasks/``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from components.config import ConfigError


def bind_images(cfg: Any, stats: dict) -> Any:
    """Fill the model's ``in_channels``, ``image_size`` and ``num_classes`` from ``stats.json``
    where they are 0, check them where params.yaml sets them, and re-validate the config (an
    architecture may not fit every size). Messages name keys of the model section; the loop
    prefixes the algorithm's (``train.<algo>.model``)."""
    classes, shape = stats.get("num_classes"), stats.get("input_shape")
    if classes is not None and hasattr(cfg, "num_classes"):  # CLIP has no class count of its own
        if cfg.num_classes == 0:
            cfg.num_classes = int(classes)
        elif classes != cfg.num_classes:
            raise ConfigError(f"num_classes: the data has {classes} classes, the model {cfg.num_classes}; "
                              f"set num_classes: {classes} (or 0: from the data)")
    if shape is not None:
        have = (cfg.in_channels or shape[0], cfg.image_size or shape[-1])
        if [have[0], have[1], have[1]] != list(shape):
            raise ConfigError(f"in_channels/image_size: the data's images are {tuple(shape)}, the model's are "
                              f"{(have[0], have[1], have[1])}; set in_channels and image_size "
                              f"to 0 (from the data) or to {shape[0]} and {shape[-1]}")
        cfg.in_channels, cfg.image_size = int(shape[0]), int(shape[-1])
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{exc} (the size comes from the data)") from None
    return cfg


def base_resolution(size: int) -> tuple[int, int]:
    """(base, doublings): ``size`` halved while it is even and above 7, e.g. 8 -> (4, 1),
    32 -> (4, 3), 28 -> (7, 2), 224 -> (7, 5). A generator grows from base x base."""
    base, n = size, 0
    while base % 2 == 0 and base > 7:
        base, n = base // 2, n + 1
    return base, n


def check_evaluator(stats: dict, data_dir: Any, algo: str) -> None:
    """A family scored by FID every epoch needs the dataset's feature network in its shards."""
    if "evaluator" not in stats:
        raise ConfigError(f"{data_dir}: these shards have no evaluator (feature network); {algo} is scored by "
                          f"FID on it every epoch. Use an image dataset whose preprocess fits one (digits)")


@torch.no_grad()
def ema_update(ema: nn.Module, source: nn.Module, decay: float, step: int | None = None) -> None:
    """ema ← decay·ema + (1 − decay)·source for parameters; buffers (BatchNorm statistics) are
    copied. With ``step``, the decay warms up as min(decay, (1 + step)/(10 + step)), so early
    averages do not hold on to the random initialisation."""
    if step is not None:
        decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), source.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), source.buffers()):
        e.copy_(b)
