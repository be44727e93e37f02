"""What train reads of a sweep: best.yaml's schedule, peak LR and warm-up on top of the typed config."""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError, ScheduleConfig, TrainConfig
from components.training import winner
from components.training.sweep import Trial


def test_the_winner_is_applied_to_the_typed_config_as_the_sweep_trained_it(tmp_path):
    cfg = TrainConfig(lr=0.1, epochs=7, schedule=ScheduleConfig(name="cosine", warmup=0.05, min_lr_ratio=0.1))
    won = Trial("t03", "onecycle", 0.0321, 0.0)
    best, metrics = tmp_path / "best.yaml", tmp_path / "tune.json"
    best.write_text(winner.winner_yaml(won.overrides(), "algo"))
    metrics.write_text(json.dumps({"mlflow_run_id": "abc", "best_trial": "t03"}))
    tuned, tags = winner.with_winner(cfg, "algo", best, metrics, "best.yaml")
    assert tuned == won.apply(cfg)  # what the winning trial trained, at train's own epochs
    assert (tuned.lr, tuned.schedule.name, tuned.schedule.warmup, tuned.schedule.min_lr_ratio, tuned.epochs) == \
        (0.0321, "onecycle", 0.0, 0.1, 7)
    assert cfg.lr == 0.1 and tags == {"tuned": "true", "tune_run_id": "abc", "tune_trial": "t03"}
    untuned = TrainConfig(tuned=False)
    assert winner.with_winner(untuned, "algo", best, metrics, "best.yaml") == (untuned, {"tuned": "false"})


@pytest.mark.parametrize("text,message", [
    ("lr: 0.1\nschedule: {name: warp, warmup: 0.0}\n", "best.yaml.schedule.name: must be one of"),
    ("lr: -3\nschedule: {name: cosine, warmup: 0.0}\n", r"best.yaml.lr: must be in \(0"),
    ("just a line\n", "best.yaml: not the tune stage's lr and schedule"),
])
def test_a_bad_best_yaml_is_one_clear_line(tmp_path, text, message):
    (tmp_path / "best.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        winner.with_winner(TrainConfig(), "algo", tmp_path / "best.yaml", tmp_path / "none.json", "best.yaml")
    with pytest.raises(ConfigError, match="is missing: run `dvc repro stages/algo/dvc.yaml:tune-algo`"):
        winner.with_winner(TrainConfig(), "algo", tmp_path / "absent.yaml", tmp_path / "none.json", "absent.yaml")
