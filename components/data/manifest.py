"""Checksum manifests: a JSON file beside the data listing every file's size and sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"


class DataError(RuntimeError):
    """Data on disk is missing, corrupt or not what its manifest says."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, meta: dict) -> dict:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {**meta, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_manifest(directory: Path, fix: str) -> dict:
    """Check every listed file; ``fix`` is the command that re-creates the directory."""
    path = directory / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: manifest not found; {fix}")
    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        f = directory / name
        if not f.exists():
            raise DataError(f"{f}: listed in {path} but missing; {fix}")
        if f.stat().st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
            raise DataError(f"{f}: checksum does not match {path} (corrupt or changed); {fix}")
    return manifest
