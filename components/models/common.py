"""Checks shared by the families that read image shards (ResNet, GAN; VAE and diffusion next)."""

from __future__ import annotations

from typing import Any

from components.config import ConfigError


def check_images(cfg: Any, stats: dict, algo: str) -> None:
    """The model's ``num_classes``, ``in_channels`` and ``image_size`` against ``stats.json``."""
    classes, shape = stats.get("num_classes"), stats.get("input_shape")
    if classes is not None and classes != cfg.num_classes:
        raise ConfigError(f"num_classes: the data has {classes} classes, the model {cfg.num_classes}; "
                          f"set train.{algo}.model.num_classes: {classes}")
    if shape is not None and list(shape) != [cfg.in_channels, cfg.image_size, cfg.image_size]:
        raise ConfigError(f"in_channels/image_size: the data's images are {tuple(shape)}, the model's are "
                          f"{(cfg.in_channels, cfg.image_size, cfg.image_size)}; set train.{algo}.model."
                          f"in_channels: {shape[0]} and image_size: {shape[-1]}")
