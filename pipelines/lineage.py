"""Lineage of a run: git commit, DVC data version, run keys, and the step/epoch tables for plots."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from components.training import storage


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty and commit != "unknown" else "")


def data_version(shard_dir: Path) -> str:
    """Content hash of a shard directory: sha256 of stats.json, which lists every shard's sha256."""
    return hashlib.sha256((Path(shard_dir) / "stats.json").read_bytes()).hexdigest()[:16]


def dvc_md5(root: Path, path: str) -> str:
    """The md5 DVC recorded in dvc.lock for ``path`` (an output of an earlier stage), if any."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if out.get("path") == path:
                return out.get("md5", "unknown")
    return "unknown"


def run_key(*parts: Any) -> str:
    """A short stable hash: the same config on the same data maps to the same run directory."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def code_version(root: Path, paths: list[str]) -> str:
    """Content hash of the Python files under ``paths`` (files or folders, relative to ``root``).

    Part of a training run's key: a run is resumed only by the same config, data *and* code,
    so a change to the model or the loop retrains instead of reusing a finished checkpoint.
    """
    digest = hashlib.sha256()
    for rel in sorted(paths):
        base = Path(root) / rel
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        for f in files:
            digest.update(str(f.relative_to(root)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, data: Any) -> None:
    """Write ``path`` whole: a temporary sibling renamed over it (a reader never sees half a file)."""
    storage.write_text(str(path), json.dumps(data, indent=2, sort_keys=True) + "\n")
