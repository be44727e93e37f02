"""Is dvc.yaml what params.yaml and the code's imports make it? Asked before every stage DVC runs.

DVC runs the DAG that dvc.yaml spells out, and dvc.yaml is written by ``python -m pipelines.dag``
from params.yaml and the code's imports. A params.yaml edited without that step (a new dataset
for an algorithm, a new family key) would run stages with the dependencies of before: a stage
told to rebuild shards that no stage makes, a train that DVC never re-runs for a new input. So
when DVC starts a stage (``DVC_STAGE`` set), the stage runner asks this module first, and a
stale dvc.yaml stops the stage in about a second with one line, before any work:

    error: dvc.yaml is out of date with params.yaml: run python -m pipelines.dag (...)

The check renders the pipeline files (dvc.yaml and stages/<algo>/dvc.yaml: ``pipelines.dag.render``,
half a second) and compares. It remembers the inputs of the last check that passed (params.yaml,
the pipeline files and the size and time of every project source file) in ``.dvc/tmp``, so a
``dvc repro`` pays it once, not once per stage.

How a stage is started is not what it computes: this module, like the stage runner that calls
it, is in no stage's dependencies.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

MESSAGE = "dvc.yaml is out of date with params.yaml: run python -m pipelines.dag"
SOURCES = ("components", "pipelines")
MARK = Path(".dvc") / "tmp" / "m7-dag-fresh"


def _fingerprint(root: Path, pipeline_files: dict[str, str]) -> str:
    digest = hashlib.sha256((root / "params.yaml").read_bytes())
    for name, text in pipeline_files.items():
        digest.update(f"{name}\0{text}".encode())
    for package in SOURCES:
        for folder, dirs, files in os.walk(root / package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for file in sorted(f for f in files if f.endswith(".py")):
                stat = os.stat(os.path.join(folder, file))
                digest.update(f"{folder}/{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def stale(root: Path) -> str | None:
    """The one-line reason dvc.yaml under ``root`` is out of date, or None when it is current (or
    params.yaml is too broken to render: the stage itself then names what is wrong with it)."""
    from components.config import ConfigError
    from components.params import load_params
    from pipelines import dag

    if not (root / "params.yaml").is_file() or not (root / "dvc.yaml").is_file():
        return None
    mark = root / MARK
    current = dag.on_disk(root)
    fingerprint = _fingerprint(root, current)
    if mark.is_file() and mark.read_text() == fingerprint:
        return None
    try:
        rendered = dag.render(load_params(root / "params.yaml"), root)
    except (ConfigError, KeyError, TypeError, AttributeError, ValueError):
        return None
    found = dag.differences(rendered, current)
    if any(found.values()):
        parts = [f"{label}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                 for label, names in (("it lacks", found["lacking"]), ("differ", found["differing"]),
                                      ("gone", found["gone"]), ("files", found.get("files", []))) if names]
        return f"{MESSAGE} and commit it (stages {'; '.join(parts)})"
    if mark.parent.is_dir():
        tmp = mark.with_name(f"{mark.name}.{os.getpid()}")
        tmp.write_text(fingerprint)
        os.replace(tmp, mark)
    return None


def guard() -> None:
    """Stop a stage that DVC started from a stale dvc.yaml: one line on stderr, exit 2."""
    if not os.environ.get("DVC_STAGE"):
        return
    reason = stale(Path.cwd())
    if reason:
        print(f"error: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(2)
