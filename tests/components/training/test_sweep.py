"""The sweep's decisions: trials drawn once from a seed, rungs, successive halving by whole rungs."""

from __future__ import annotations

import math

import pytest

from components.config import ConfigError, ScheduleConfig, SearchSpace, TrainConfig
from components.training import sweep as sha

BASE = TrainConfig(lr=0.1, schedule=ScheduleConfig(name="cosine", warmup=0.05, gamma=0.2))


def test_trials_are_the_base_config_then_draws_fixed_by_the_seed():
    space = SearchSpace(schedule=["cosine", "inverse_sqrt"], lr=[0.01, 0.5], warmup=[0.0, 0.1])
    a = sha.draw(space, BASE, 3, seed=7)
    assert a == sha.draw(space, BASE, 3, seed=7)
    assert a != sha.draw(space, BASE, 3, seed=8)
    assert a[0] == sha.Trial("t00", "cosine", 0.1, 0.05)  # params.yaml's own config, always
    assert [t.name for t in a] == [f"t{i:02d}" for i in range(7)]
    assert sorted(t.schedule for t in a[1:]) == ["cosine"] * 3 + ["inverse_sqrt"] * 3
    assert all(0.01 <= t.lr <= 0.5 and t.warmup in (0.0, 0.1) for t in a[1:])
    assert all(t.warmup > 0 for t in a if t.schedule == "inverse_sqrt")  # undefined without a warm-up
    applied = a[1].apply(BASE)
    assert isinstance(applied, TrainConfig) and applied.schedule.gamma == 0.2 and applied.lr == a[1].lr
    assert applied.schedule.name == a[1].schedule and BASE.lr == 0.1 and BASE.schedule.name == "cosine"  # unchanged
    with pytest.raises(ConfigError, match="trial.schedule.warmup: inverse_sqrt needs a warm-up"):
        sha.Trial("t99", "inverse_sqrt", 0.1, 0.0).apply(BASE)  # checked as params.yaml's values are
    with pytest.raises(ConfigError, match=r"trial.lr: must be in \(0"):
        sha.Trial("t99", "cosine", -1.0, 0.0).apply(BASE)


def test_rungs_and_the_epochs_a_plan_costs():
    assert sha.rungs(2, 3, 12) == [2, 6, 12]
    assert sha.rungs(1, 3, 4) == [1, 3, 4]
    assert sha.rungs(5, 2, 5) == [5]
    assert sha.plan(13, 2, 3, 12) == [(2, 13), (6, 4), (12, 1)]
    assert sha.epochs_spent(sha.plan(13, 2, 3, 12)) == 13 * 2 + 4 * 4 + 1 * 6
    # A single survivor before the last rung trains straight to the end.
    assert sha.plan(4, 1, 3, 27) == [(1, 4), (27, 1)]


def fake_training(values: dict[str, list[float]], calls: list):
    """A deterministic stand-in for a rung of trials: trial -> val metric per epoch."""
    def run_rung(trials, epochs):
        calls.append((epochs, [t.name for t in trials]))
        out = {}
        for t in trials:
            v = values[t.name][epochs - 1]
            out[t.name] = RuntimeError("diverged") if v is None else {"val_accuracy": v, "val_loss": 1 - v}
        return out
    return run_rung


def test_successive_halving_keeps_the_best_third_by_whole_rungs_and_breaks_ties_by_name():
    trials = [sha.Trial(f"t{i:02d}", "cosine", 0.1, 0.0) for i in range(7)]
    # Accuracy per epoch (1..9): t03 starts slowly and ends best; t05 ties t01 at the first rung.
    values = {
        "t00": [0.50] * 9, "t01": [0.70] * 9, "t02": [0.60] * 9, "t03": [0.55, 0.6, 0.9] + [0.95] * 6,
        "t04": [None] * 9, "t05": [0.70] * 9, "t06": [0.65, 0.66, 0.8] + [0.8] * 6,
    }
    calls, decisions = [], []
    result = sha.successive_halving(
        trials, fake_training(values, calls), grace_period=1, reduction_factor=3, epochs=9,
        metric="val_accuracy", mode="max", on_rung=lambda e, kept, stopped: decisions.append(
            (e, [o.trial.name for o in kept], [o.trial.name for o in stopped])))
    # Rung 1: 6 alive (t04 failed) -> keep 2: t01 and t05 tie at 0.70, same loss: the name decides.
    # t00 (params.yaml's own) is cut there, and goes on as the control, out of the competition.
    assert decisions[0] == (1, ["t01", "t05"], ["t06", "t02", "t03", "t00"])
    assert calls == [(1, [t.name for t in trials]), (3, ["t00", "t01", "t05"]), (9, ["t00", "t01"])]
    assert result.winner.trial.name == "t01"
    status = {o.trial.name: o.status for o in result.outcomes}
    assert status["t04"] == sha.FAILED and status["t01"] == sha.COMPLETED and status["t03"] == sha.STOPPED
    assert status["t00"] == sha.CONTROL
    assert result.epochs_spent == 7 * 1 + 3 * 2 + 2 * 6  # one more trial to the end than without the control
    assert result.gain() == {"epochs": 9, "baseline": 0.5, "winner": 0.7}  # both at the final budget

    calls.clear()
    plain = sha.successive_halving(trials, fake_training(values, calls), grace_period=1, reduction_factor=3, epochs=9,
                                   metric="val_accuracy", mode="max", control=False)
    assert calls == [(1, [t.name for t in trials]), (3, ["t01", "t05"]), (9, ["t01"])]
    assert plain.winner.trial.name == "t01" and plain.gain() == {"epochs": 1, "baseline": 0.5, "winner": 0.7}


def test_the_control_never_wins_unless_it_earned_its_place_and_its_failure_stops_nothing():
    trials = [sha.Trial(f"t{i:02d}", "cosine", 0.1, 0.0) for i in range(4)]
    # t00 is worst at rung 1 and best at the end: as the control it cannot win.
    late = {"t00": [0.1, 0.2, 0.3, 0.99], "t01": [0.5] * 4, "t02": [0.4] * 4, "t03": [0.3] * 4}
    result = sha.successive_halving(trials, fake_training(late, []), grace_period=1, reduction_factor=2, epochs=4,
                                    metric="val_accuracy", mode="max")
    assert result.winner.trial.name == "t01" and result.gain() == {"epochs": 4, "baseline": 0.99, "winner": 0.5}
    # Kept on merit, t00 competes like any trial and may win.
    early = {"t00": [0.9] * 4, "t01": [0.5] * 4, "t02": [0.4] * 4, "t03": [0.3] * 4}
    assert sha.successive_halving(trials, fake_training(early, []), grace_period=1, reduction_factor=2, epochs=4,
                                  metric="val_accuracy", mode="max").winner.trial.name == "t00"
    # A control that diverges later is a failed trial; the sweep goes on.
    broken = {**late, "t00": [0.1, None, None, None]}
    result = sha.successive_halving(trials, fake_training(broken, []), grace_period=1, reduction_factor=2, epochs=4,
                                    metric="val_accuracy", mode="max")
    assert result.winner.trial.name == "t01" and result.outcomes[0].status == sha.FAILED


def test_minimising_a_metric_and_non_finite_values_rank_last():
    trials = [sha.Trial(f"t{i:02d}", "cosine", 0.1, 0.0) for i in range(4)]

    def run_rung(live, epochs):
        fid = {"t00": 3.0, "t01": math.nan, "t02": 1.0, "t03": 2.0}
        return {t.name: {"val_fid": fid[t.name] / epochs} for t in live}

    result = sha.successive_halving(trials, run_rung, grace_period=1, reduction_factor=2, epochs=2,
                                    metric="val_fid", mode="min")
    assert [o.trial.name for o in sha.ranked(result.outcomes, 1, "val_fid", "min")][:2] == ["t02", "t03"]
    assert result.winner.trial.name == "t02"
    assert next(o for o in result.outcomes if o.trial.name == "t01").status == sha.FAILED


def test_a_sweep_whose_every_trial_fails_says_so():
    trials = [sha.Trial("t00", "cosine", 0.1, 0.0)]
    with pytest.raises(RuntimeError, match="every trial of the rung at 2 epochs failed; first error: boom"):
        sha.successive_halving(trials, lambda live, e: {"t00": ValueError("boom")}, grace_period=2,
                               reduction_factor=3, epochs=4, metric="val_accuracy", mode="max")
