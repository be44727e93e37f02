"""Checkpoints that carry their own config and load without unpickling code.

An epoch checkpoint is a directory with ``state.pt`` (model, optimizer, step, epoch, RNG;
tensors and plain containers only, read back with ``torch.load(weights_only=True)``) and
``config.json``. An exported model is ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

STATE = "state.pt"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def epoch_dir(root: Path, epoch: int) -> Path:
    return Path(root) / f"epoch-{epoch:04d}"


def save(directory: Path, *, model: nn.Module, optimizer: dict[str, Any], epoch: int,
         step: int, config: dict[str, Any], metrics: dict[str, float]) -> Path:
    """Write an epoch checkpoint atomically (a crash mid-write leaves no half checkpoint).

    ``optimizer`` is the training step's state: one optimizer's state dict, or several.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer, "epoch": epoch,
                "step": step, "torch_rng": torch.get_rng_state()}, tmp / STATE)
    (tmp / CONFIG).write_text(json.dumps({"config": config, "epoch": epoch, "step": step,
                                          "metrics": metrics}, indent=2, sort_keys=True))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of an epoch checkpoint; state holds tensors only."""
    directory = Path(directory)
    state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
    meta = json.loads((directory / CONFIG).read_text())
    return state, meta


def latest(root: Path) -> Path | None:
    """The newest complete epoch checkpoint under ``root``, if any."""
    root = Path(root)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE).exists() and (p / CONFIG).exists())
    return done[-1] if done else None


def prune(root: Path, keep: int) -> None:
    for old in sorted(Path(root).glob("epoch-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def export(directory: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write deployable weights (safetensors) and their config to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Tied weights (a Transformer's shared embeddings) are one tensor under several names;
    # safetensors stores no aliases, so each name gets its own copy and loading re-ties them.
    save_file({k: v.detach().clone().contiguous() for k, v in model_state.items()}, directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def export_latest(run_checkpoints: Path, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Replace ``directory`` with the weights of the newest epoch checkpoint under ``run_checkpoints``.

    ``meta`` is written beside them with the run's train config and val metrics added;
    returns that epoch's metrics.
    """
    state, saved = load(latest(run_checkpoints))
    shutil.rmtree(directory, ignore_errors=True)
    export(directory, state["model"], {**meta, "train": saved["config"], "val_metrics": {
        k: v for k, v in saved["metrics"].items() if k.startswith("val_")}})
    return saved["metrics"]


def load_exported(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name}: not found; re-run the stage that writes {directory}")
    return load_file(directory / WEIGHTS), json.loads((directory / CONFIG).read_text())
