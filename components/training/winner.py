"""The sweep's winner as the train stage reads it: ``models/<algo>/tune/best.yaml``.

The tune stage writes the file (:func:`winner_yaml`) and the train stage applies it
(:func:`with_winner`). This module is all that train knows of a sweep, so the sweep's code
(``sweep.py``, ``sweep_record.py``, ``tune_run.py``) is in the tune stages' closure only: an
edit there re-runs tune, and train only when the winner it writes changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError, TrainConfig, with_schedule


def winner_yaml(overrides: dict[str, Any], algo: str) -> str:
    """The tune stage's ``best.yaml``: the winner's schedule, peak LR and warm-up (a trial's
    ``overrides()``), nothing else (an unchanged winner leaves the file, and the train stage, as they were)."""
    return (f"# train.{algo} overrides chosen by the tune stage's sweep (train.{algo}.tuned: true trains with them)\n"
            + yaml.safe_dump(overrides, sort_keys=True))


def with_winner(cfg: TrainConfig, algo: str, best: Path, sweep_metrics: Path,
                shown: str) -> tuple[TrainConfig, dict[str, str]]:
    """``cfg`` with the sweep's winning schedule, peak LR and warm-up (``best``, the tune stage's
    ``best.yaml``, shown as ``shown``) where ``cfg.tuned``, and lineage tags naming the tune run that
    chose them (from its ``sweep_metrics``); ``cfg`` itself when not tuned."""
    if not cfg.tuned:
        return cfg, {"tuned": "false"}
    if not best.exists():
        raise ConfigError(f"{shown} is missing: run `dvc repro stages/{algo}/dvc.yaml:tune-{algo}` (or the whole pipeline) first, "
                          f"or set train.{algo}.tuned: false to train params.yaml's own schedule")
    won = yaml.safe_load(best.read_text())
    if not isinstance(won, dict) or not isinstance(won.get("schedule", {}), dict):
        raise ConfigError(f"{shown}: not the tune stage's lr and schedule; run `dvc repro --force "
                          f"stages/{algo}/dvc.yaml:tune-{algo}` to write it again")
    schedule = won.get("schedule") or {}
    tuned = with_schedule(cfg, shown, won.get("lr", cfg.lr), schedule.get("name", cfg.schedule.name),
                          schedule.get("warmup", cfg.schedule.warmup))
    # Which run chose them (not a stage dependency: a re-run sweep with the same winner leaves train alone).
    sweep = json.loads(sweep_metrics.read_text()) if sweep_metrics.exists() else {}
    return tuned, {"tuned": "true", "tune_run_id": str(sweep.get("mlflow_run_id", "")),
                   "tune_trial": str(sweep.get("best_trial", ""))}
