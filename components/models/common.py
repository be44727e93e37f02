"""Pieces shared by the image families: the data checks (ResNet, GAN, VAE, diffusion), the EMA
of the generators' weights, and the request format of their pyfuncs (GAN, diffusion)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import ConfigError

MAX_SAMPLES = 10_000  # per pyfunc request


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


def image_shape(cfg: Any, n: str | int = "N") -> str:
    """How the family's images are shaped in and out of serving: ``(N, H, W)`` for one channel
    (sklearn's digits, MNIST), ``(N, C, H, W)`` otherwise, from the bound config."""
    side = f"{cfg.image_size}, {cfg.image_size}"
    return f"({n}, {side})" if cfg.in_channels == 1 else f"({n}, {cfg.in_channels}, {side})"


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


def generation_requests(model_input: Any, cfg: Any) -> list[tuple[int, int, int | None]]:
    """(count, seed, label or None) per request row; a DataFrame, a dict or a list of dicts with
    ``count`` and ``seed`` (and ``label`` for a conditional model; −1 or missing = random classes)."""
    import pandas as pd

    if isinstance(model_input, dict):
        model_input = [model_input]
    frame = pd.DataFrame(model_input) if isinstance(model_input, list) else model_input
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a DataFrame (or dicts) with columns count, seed[, label], "
                        f"got {type(model_input).__name__}")
    missing = {"count", "seed"} - set(frame.columns)
    if missing:
        raise ValueError(f"missing column(s) {sorted(missing)}; each row asks for `count` images from noise `seed`")
    requests = []
    for i, row in enumerate(frame.to_dict("records")):
        count, seed = int(row["count"]), int(row["seed"])
        label = row.get("label")
        label = None if label is None or (isinstance(label, float) and math.isnan(label)) or int(label) < 0 else int(label)
        if not 1 <= count <= MAX_SAMPLES:
            raise ValueError(f"row {i}: count must be in [1, {MAX_SAMPLES}], got {count}")
        if label is not None and not cfg.conditional:
            raise ValueError(f"row {i}: this model is unconditional; drop `label` (or set it to -1)")
        if label is not None and not 0 <= label < cfg.num_classes:
            raise ValueError(f"row {i}: label must be in [0, {cfg.num_classes - 1}] (or -1 for random), got {label}")
        requests.append((count, seed, label))
    return requests


def generation_signature(cfg: Any, params: list | None = None):
    """Rows of (count, seed[, label]) in; images (N, H, W) or (N, C, H, W) float32 out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, Schema, TensorSpec

    shape = (-1, cfg.image_size, cfg.image_size) if cfg.in_channels == 1 else \
        (-1, cfg.in_channels, cfg.image_size, cfg.image_size)
    return ModelSignature(inputs=Schema([ColSpec("long", "count"), ColSpec("long", "seed"),
                                         ColSpec("long", "label", required=False)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
                          params=ParamSchema(params) if params else None)


def generation_example():
    import pandas as pd

    return pd.DataFrame({"count": [4, 4], "seed": [0, 1], "label": [3, -1]})
