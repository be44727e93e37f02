"""Checkpoints that carry their own config and load without unpickling code.

An epoch checkpoint is a directory with ``state.pt`` (model, optimizer, step, epoch, RNG;
tensors and plain containers only, read back with ``torch.load(weights_only=True)``) and
``config.json``. An exported model is ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from components.training import storage

STATE = "state.pt"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def epoch_dir(root: str, epoch: int) -> str:
    return storage.join(str(root), f"epoch-{epoch:04d}")


def due(epoch: int, every: int, epochs: int | None) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``epochs`` is checkpointed: every ``every``-th, and the last."""
    return (epoch + 1) % every == 0 or (epochs is not None and epoch == epochs - 1)


_staged: list[str] = []  # local copies of checkpoints published to a remote root (for Ray's report)


def save(directory: str, *, model: nn.Module, optimizer: dict[str, Any], epoch: int,
         step: int, config: dict[str, Any], metrics: dict[str, float]) -> Path:
    """Write an epoch checkpoint atomically (a crash mid-write leaves no half checkpoint).

    ``directory`` is a local path or a URL under the storage root. ``optimizer`` is the
    training step's state: one optimizer's state dict, or several. Returns a local
    directory holding the checkpoint: ``directory`` itself when it is local, else a staged
    copy (kept until the next save) that Ray Train can persist to its own storage.
    """
    def write(folder: Path) -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer, "epoch": epoch,
                    "step": step, "torch_rng": torch.get_rng_state()}, folder / STATE)
        (folder / CONFIG).write_text(json.dumps({"config": config, "epoch": epoch, "step": step,
                                                 "metrics": metrics}, indent=2, sort_keys=True))

    directory = str(directory)
    local = storage.local_path(directory)
    if local is not None:
        with storage.written_whole(local) as tmp:
            write(tmp)
        return Path(local)
    tmp = Path(tempfile.mkdtemp(prefix=f"{Path(directory).name}-"))
    write(tmp)
    fs, path = storage.resolve(directory)
    storage.remove(directory)
    fs.put_file(str(tmp / STATE), f"{path}/{STATE}")
    fs.put_file(str(tmp / CONFIG), f"{path}/{CONFIG}")  # last: its presence marks the checkpoint complete
    _staged.append(str(tmp))
    while len(_staged) > 1:
        shutil.rmtree(_staged.pop(0), ignore_errors=True)
    return tmp


def load(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of an epoch checkpoint (local or under a URL); state holds tensors only."""
    directory = str(directory)
    with storage.open_file(storage.join(directory, STATE)) as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    meta = json.loads(storage.read_text(storage.join(directory, CONFIG)))
    return state, meta


def epoch_of(directory: str | Path) -> int:
    """The epoch a checkpoint directory holds (read from its config.json)."""
    return int(json.loads(storage.read_text(storage.join(str(directory), CONFIG)))["epoch"])


def _complete(root: str) -> list[str]:
    """Names of the complete epoch checkpoints under ``root``, oldest first: one listing.

    Locally a checkpoint appears whole (a rename); on an object store its ``config.json`` is
    uploaded last, so its presence is what makes one complete.
    """
    fs, path = storage.resolve(root)
    return sorted(p.rstrip("/").split("/")[-2] for p in fs.glob(f"{path.rstrip('/')}/epoch-*/{CONFIG}")
                  if storage.TMP_MARK not in p)


def latest(root: str | Path) -> str | None:
    """The newest complete epoch checkpoint under ``root`` (a path or URL), if any."""
    done = _complete(str(root))
    return storage.join(str(root), done[-1]) if done else None


def prune(root: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; also clears temporaries a killed writer left."""
    root = str(root)
    names = [n for n in storage.listdir(root) if n.startswith("epoch-") or storage.TMP_MARK in n]
    done = _complete(root)
    for name in names:
        if name not in done[-keep:]:
            storage.remove(storage.join(root, name))


def export(directory: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write deployable weights (safetensors) and their config to ``directory``, replacing it
    whole: they are written beside it and renamed, so no reader sees half an export."""
    with storage.written_whole(directory) as tmp:
        # Tied weights (a Transformer's shared embeddings) are one tensor under several names;
        # safetensors stores no aliases, so each name gets its own copy and loading re-ties them.
        save_file({k: v.detach().clone().contiguous() for k, v in model_state.items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def export_latest(run_checkpoints: str, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Replace ``directory`` with the weights of the newest epoch checkpoint under ``run_checkpoints``.

    ``meta`` is written beside them with the run's train config and val metrics added;
    returns that epoch's metrics.
    """
    source = latest(run_checkpoints)
    if source is None:
        raise FileNotFoundError(f"{run_checkpoints}: no complete epoch checkpoint; re-run the stage that trains it")
    state, saved = load(source)
    export(directory, state["model"], {**meta, "train": saved["config"], "val_metrics": {
        k: v for k, v in saved["metrics"].items() if k.startswith("val_")}})
    return saved["metrics"]


def load_exported(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name}: not found; re-run the stage that writes {directory}")
    return load_file(directory / WEIGHTS), json.loads((directory / CONFIG).read_text())
