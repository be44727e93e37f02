"""A sweep's record: its runs in MLflow, and the summary, tables and figure the tune stage writes.

MLflow holds one parent run for the sweep and one nested run per trial (its config, and the
status the rungs give it: stopped trials end as KILLED when their rung decides, the others
when the sweep ends). The outputs are ``sweep.json`` (:func:`summary_of`: nothing that differs
between two runs of the same sweep), ``trials.csv``, ``lr.csv`` and ``sweep.png``
(:func:`tables_and_figure`) and the stage's metrics (:func:`stage_metrics`); the tune stage writes
them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from components import tracking
from components.config import TrainConfig, to_dict
from components.evaluation import plots
from components.training import sweep as sha
from components.training.loop import HISTORY, read_rows


class SweepRuns:
    """The sweep's MLflow runs: a parent, and a child per trial created up front."""

    def __init__(self, client: Any, experiment: str, algo: str, name: str, tags: dict[str, str],
                 params: dict[str, Any], trials: list[sha.Trial], base: TrainConfig):
        self.client, self.algo = client, algo
        self.epochs = base.epochs  # the sweep's budget: the last rung
        self.parent = client.create_run(experiment, run_name=name, tags={"stage": "tune", "algo": algo, **tags})
        self.parent_id = self.parent.info.run_id
        tracking.log_batch(client, self.parent_id, params=tracking.params_of(params))
        self.run_ids: dict[str, str] = {}
        for t in trials:
            run = client.create_run(experiment, run_name=f"{t.name} {t.schedule} lr {t.lr:.3g}", tags={
                "mlflow.parentRunId": self.parent_id, "stage": "tune", "algo": algo, "trial": t.name,
                "status": "running", **({"baseline": "params.yaml's own config"} if t.name == "t00" else {})})
            tracking.log_batch(client, run.info.run_id, params=tracking.params_of(to_dict(t.apply(base))))
            self.run_ids[t.name] = run.info.run_id

    def decided(self, epochs: int, kept: list[sha.Outcome], stopped: list[sha.Outcome], metric: str) -> None:
        """A rung's decision: the stopped trials' runs end (the next rungs go on without them, and
        with params.yaml's own config as the control when it was cut)."""
        for o in stopped:
            if o.status == sha.CONTROL:
                continue
            self.client.set_tag(self.run_ids[o.trial.name], "status", sha.STOPPED)
            self.client.set_terminated(self.run_ids[o.trial.name], "KILLED")
        names = ", ".join(f"{o.trial.name} {o.at[epochs][metric]:.4f}" for o in kept)
        if epochs == self.epochs:
            print(f"tune {self.algo}: at {epochs} epochs the winner is {kept[0].trial.name} ({names})", flush=True)
            return
        cut = [o for o in stopped if o.status != sha.CONTROL]
        carried = "".join(f"; {o.trial.name} (params.yaml's own, {o.at[epochs][metric]:.4f}) goes on as the control"
                          for o in stopped if o.status == sha.CONTROL)
        print(f"tune {self.algo}: at {epochs} epochs {len(kept)} go on ({names}), {len(cut)} stopped{carried}",
              flush=True)

    def failed(self) -> None:
        self.client.set_terminated(self.parent_id, "FAILED")

    def trials_done(self, result: sha.Sweep) -> None:
        for o in result.outcomes:
            if o.status != sha.STOPPED:
                self.client.set_tag(self.run_ids[o.trial.name], "status", o.status)
                self.client.set_terminated(self.run_ids[o.trial.name], "FAILED" if o.status == sha.FAILED else "FINISHED")

    def finish(self, metrics: dict[str, Any], winner: sha.Outcome, artifacts: list[Path]) -> None:
        """Log the stage's metrics, the winner's tags and ``artifacts`` on the parent run, and end it."""
        for path in artifacts:
            self.client.log_artifact(self.parent_id, str(path))
        t = winner.trial
        tracking.log_batch(self.client, self.parent_id, metrics=[
            tracking.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()
            if isinstance(v, (int, float))], tags={
                "best_trial": t.name, "best_schedule": t.schedule, "best_lr": repr(t.lr),
                "best_warmup": repr(t.warmup), "best_run_id": self.run_ids[t.name]})
        self.client.set_terminated(self.parent_id, "FINISHED")


def _last(o: sha.Outcome, metric: str) -> float:
    return o.at[o.epochs][metric] if o.at else float("nan")


def summary_of(result: sha.Sweep, budget: int) -> dict[str, Any]:
    """``sweep.json``: what the sweep found, with nothing that differs between two runs of it
    (``budget``: the epochs every trial's schedule spans)."""
    metric, win, base = result.metric, result.winner, result.baseline()
    return {
        "metric": metric, "mode": result.mode,
        "winner": {"trial": win.trial.name, **win.trial.overrides(), "epochs": win.epochs, metric: _last(win, metric)},
        "baseline": {"trial": base.trial.name, **base.trial.overrides(), "epochs": base.epochs, "status": base.status,
                     metric: _last(base, metric)},
        # Both at the last rung the baseline reached: what the sweep bought over params.yaml's own config.
        "same_budget": result.gain(),
        "trials": len(result.outcomes), "rungs": [list(s) for s in result.steps],
        "epochs_spent": result.epochs_spent, "epochs_if_all_ran_to_the_end": len(result.outcomes) * budget,
        "outcomes": [{"trial": o.trial.name, "schedule": o.trial.schedule, "lr": o.trial.lr, "warmup": o.trial.warmup,
                      "status": o.status, "epochs": o.epochs, metric: _last(o, metric), "error": o.error}
                     for o in result.outcomes],
    }


def tables_and_figure(result: sha.Sweep, runs_root: str, title: str) -> tuple[dict[str, list[dict]], Any]:
    """``trials.csv`` (a row per trial; the last column is what ``dvc plots`` draws) and ``lr.csv``
    (every trial's LR per step) as rows, and the sweep's figure (validation curves, the rungs and
    the winner); the stage writes them."""
    metric, win = result.metric, result.winner
    rows = []
    for o in result.outcomes:
        last = o.at.get(o.epochs, {})
        rows.append({"trial": o.trial.name, "schedule": o.trial.schedule, "lr": o.trial.lr, "warmup": o.trial.warmup,
                     "status": o.status, "epochs": o.epochs, "val_loss": last.get("val_loss", float("nan")),
                     metric: last.get(metric, float("nan"))})
    curves = {o.trial.name: read_rows(f"{runs_root}/{o.trial.name}/{HISTORY}") for o in result.outcomes}
    lr = [{"trial": f"{o.trial.name}-{o.trial.schedule}", "step": r["step"], "lr": r["lr"]}
          for o in result.outcomes for r in curves[o.trial.name]]
    figure = [{"trial": o.trial.name, "schedule": o.trial.schedule, "lr": o.trial.lr, "steps": curves[o.trial.name],
               "at": {e: m.get(metric, float("nan")) for e, m in o.at.items()},
               "winner": o is win, "baseline": o.trial.name == "t00"} for o in result.outcomes]
    return {"trials.csv": rows, "lr.csv": lr}, plots.sweep(figure, metric, title)


def stage_metrics(result: sha.Sweep, summary: dict[str, Any], wall: float, parent_run_id: str) -> dict[str, Any]:
    """``metrics/tune/<algo>.json``: the winner, what it bought over params.yaml's own config,
    and what the sweep cost."""
    metric, win, gain = result.metric, result.winner, summary["same_budget"]
    return {"best_trial": win.trial.name, "best_schedule": win.trial.schedule, "best_lr": win.trial.lr,
            "best_warmup": win.trial.warmup, f"best_{metric}": win.at[win.epochs][metric],
            "baseline_epochs": gain["epochs"], f"baseline_{metric}": gain["baseline"],
            f"winner_{metric}_at_baseline_epochs": gain["winner"], "trials": len(result.outcomes),
            "early_stopped": sum(o.status == sha.STOPPED for o in result.outcomes),
            "failed": sum(o.status == sha.FAILED for o in result.outcomes),
            "epochs_spent": result.epochs_spent, "wall_time_s": wall, "mlflow_run_id": parent_run_id}
