"""Lineage of a run: git commit, DVC data version, run keys, and the step/epoch tables for plots."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from components.data import shards
from components.training import storage


def dvc_outputs(root: Path) -> list[str]:
    """What the pipeline writes (every stage's ``outs``, ``metrics`` and ``plots`` in dvc.yaml and
    stages/*/dvc.yaml, and the ``dvc.lock`` beside each): files a repro rewrites, which say nothing
    about the code that ran."""
    root = Path(root)
    paths = []
    for path in (root / "dvc.yaml", *sorted(root.glob("stages/*/dvc.yaml"))):
        paths.append(path.with_name("dvc.lock").relative_to(root).as_posix())
        if not path.exists():
            continue
        for stage in ((yaml.safe_load(path.read_text()) or {}).get("stages") or {}).values():
            for kind in ("outs", "metrics", "plots"):
                for out in stage.get(kind) or []:
                    paths += list(out) if isinstance(out, dict) else [out]
    return paths


def git_commit(root: Path) -> str:
    """``HEAD``'s commit, with ``-dirty`` when a tracked file other than the pipeline's outputs
    differs from it (a repro rewrites ``dvc.lock`` and ``metrics/`` before register runs: that
    leaves the code that trained the model as committed)."""
    try:
        # git prints paths from the repository's top; dvc.yaml's are from ``root`` (the prefix).
        out = subprocess.run(["git", "rev-parse", "HEAD", "--show-prefix"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--no-renames"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit, prefix = (out.stdout.splitlines() + ["", ""])[:2]
    if out.returncode != 0 or not commit:
        return "unknown"
    outputs = [prefix + o.rstrip("/") for o in dvc_outputs(root)]
    changed = [line[3:].strip('"') for line in status.splitlines() if len(line) > 3]
    dirty = [f for f in changed if not any(f == o or f.startswith(o + "/") for o in outputs)]
    return commit + ("-dirty" if dirty else "")


def data_version(shard_dir: Path) -> str:
    """Content hash of a shard directory: sha256 of stats.json, which lists every shard's sha256."""
    return hashlib.sha256(shards.stats_path(shard_dir).read_bytes()).hexdigest()[:16]


def dvc_md5(root: Path, path: str) -> str:
    """The md5 DVC recorded in the top dvc.lock for ``path`` (an output of ingest or preprocess), if any."""
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


def trained_commit(client: Any, run_id: str, root: Path) -> str:
    """The commit of the code that trained a model, as its train run (``run_id``) recorded it (a
    commit made since, or outputs a repro rewrote, do not change it); this checkout's when the
    run has none."""
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            commit = client.get_run(run_id).data.tags.get("git_commit")
        except MlflowException:  # the run is in another store (a copied registry): fall back
            commit = None
        if commit and commit != "unknown":
            return commit
    return git_commit(root)
