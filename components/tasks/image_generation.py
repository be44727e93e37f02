"""The image-generation task: what the label-conditional image generators (GAN, diffusion) share.

A family of this task has a sampler ``sample(count, seed, labels, **params) -> (count, C, H, W)``
in [0, 1] (labels None: random classes, or none for an unconditional model), and a Config with
``in_channels``, ``image_size``, ``num_classes`` and ``conditional``. Here: the serving request
format (rows of ``count``, ``seed`` and an optional ``label``), its checks, the pyfunc's
``predict``, signature, example and usage line, and the sample grid of the evaluate report (one
row per class). Scoring is the shared sample-quality evaluator's
(``components/evaluation/generative.py``); training is the family's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from components.tasks.images import image_shape

MAX_SAMPLES = 10_000  # per pyfunc request
Sampler = Callable[..., torch.Tensor]  # (count, seed, labels or None, **params) -> (count, C, H, W) in [0, 1]


def classes(cfg: Any) -> int | None:
    """The class count the shared evaluator scores samples by, None for an unconditional model."""
    return cfg.num_classes if cfg.conditional else None


def requests(model_input: Any, cfg: Any) -> list[tuple[int, int, int | None]]:
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
    out = []
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
        out.append((count, seed, label))
    return out


@torch.no_grad()
def predict(sample: Sampler, model_input: Any, cfg: Any, **params: Any) -> np.ndarray:
    """The pyfunc's images for request rows, in request order: (N, H, W) for one channel, else
    (N, C, H, W), float32 in [0, 1]. ``params`` go to ``sample`` unchanged."""
    out = []
    for count, seed, label in requests(model_input, cfg):
        labels = torch.full((count,), label) if label is not None else None
        out.append(sample(count, seed, labels, **params).cpu().numpy())
    images = np.concatenate(out).astype(np.float32)
    return images[:, 0] if cfg.in_channels == 1 else images


def signature(cfg: Any, params: list | None = None):
    """Rows of (count, seed[, label]) in; images (N, H, W) or (N, C, H, W) float32 out; ``params``:
    the family's ``ParamSpec``s (sampler settings a request may change)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, Schema, TensorSpec

    shape = (-1, cfg.image_size, cfg.image_size) if cfg.in_channels == 1 else \
        (-1, cfg.in_channels, cfg.image_size, cfg.image_size)
    return ModelSignature(inputs=Schema([ColSpec("long", "count"), ColSpec("long", "seed"),
                                         ColSpec("long", "label", required=False)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
                          params=ParamSchema(params) if params else None)


def serving_example(cfg: Any):
    import pandas as pd

    return pd.DataFrame({"count": [4, 4], "seed": [0, 1], "label": [3, -1]})


def usage(name: str, cfg: Any, params: str = "", note: str = "") -> str:
    """The registry's one line on calling the model; ``params``: a ``params={...}`` example, ``note``: what it changes."""
    label = min(7, cfg.num_classes - 1)
    call = f'pd.DataFrame({{"count": [16], "seed": [0], "label": [{label}]}})' + (f", params={params}" if params else "")
    return (f'`mlflow.pyfunc.load_model("models:/{name}@champion").predict({call})` returns 16 images of class '
            f'{label}, float32 {image_shape(cfg, 16)} in [0, 1]; {note or "label -1 (or no label column) draws random classes."}')


def sample_grid(sample: Sampler, cfg: Any, per_row: int = 10, seed: int = 1234) -> tuple[np.ndarray, list[str]]:
    """(rows, per_row, C, H, W) samples for the report, one row per class (8 rows of random
    classes unconditionally), from fixed noise; and the class names."""
    rows = cfg.num_classes if cfg.conditional else 8
    labels = torch.arange(cfg.num_classes).repeat_interleave(per_row) if cfg.conditional else None
    grid = sample(rows * per_row, seed, labels).cpu().numpy()
    return grid.reshape(rows, per_row, *grid.shape[1:]), list(map(str, range(cfg.num_classes)))
