"""A sweep's rungs on Ray Tune: each rung one Tune run of every live trial, a trial the shared loop.

Only the tune stage runs this (``pipelines/tune.py``); the train stage launches through
``components/training/launch.py`` and reads the sweep's winner through
``components/training/winner.py``, so an edit here re-runs the tune stages and what follows
them through ``best.yaml``, not every train stage directly.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from components.training import launch
from components.training.loop import LoopConfig, train_loop_per_worker


class TuneReport:
    """Reports each epoch to a plain Ray Tune function trial (ASHA decides on these)."""

    all_ranks = False

    def on_step(self, rows: list[dict]) -> None:
        pass

    def on_epoch(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        from ray import tune

        tune.report(metrics)



def _sweep_trial(config: dict[str, Any], *, algo: str, family: str, base: dict[str, Any], data_dir: str,
                 runs_root: str, uri: str, workers_per_trial: int, storage_path: str, train_fraction: float) -> None:
    """One trial of one rung (runs in a Ray Tune trial actor): train ``config["trial"]`` up to epoch
    ``config["epochs"]``, resuming from its run directory, reporting each epoch to Tune and MLflow."""
    from components import tracking
    from components.training.sweep import Trial

    t = config["trial"]
    trial = Trial(t["name"], t["schedule"], t["lr"], t["warmup"])
    hooks = [tracking.MlflowHook(uri, t["run_id"])] if t.get("run_id") else []
    loop = LoopConfig.of({"algo": algo, "family": family, "train": trial.apply(base), "data_dir": data_dir,
                          "run_dir": f"{runs_root}/{trial.name}", "max_epochs": config["epochs"],
                          "train_fraction": train_fraction})
    if workers_per_trial == 0:
        train_loop_per_worker(dataclasses.replace(loop, hooks=(TuneReport(), *hooks), single_thread=True))
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        launch.fit(dataclasses.replace(loop, hooks=(launch.RayTrainReport(), *hooks)), num_workers=workers_per_trial, use_gpu=base["use_gpu"],
            storage_path=storage_path, name=f"{algo}-{trial.name}-to-{config['epochs']}",
            callbacks=[TuneReportCallback()], workers_param=f"tune.{algo}.workers_per_trial")


def sweep_rung(trials: list[dict[str, Any]], epochs: int, *, algo: str, family: str, base: dict[str, Any],
               data_dir: str, runs_root: str, storage_path: str, name: str, max_concurrent: int = 0,
               workers_per_trial: int = 0, uri: str = "", train_fraction: float = 1.0,
               metric: str = "") -> dict[str, dict[str, float] | BaseException]:
    """Train every trial up to epoch ``epochs`` as one Ray Tune run; returns, by trial name, the
    metrics of that epoch (from the trial's run directory) or the error it failed with.

    ``trials``: dicts with ``name``, ``schedule``, ``lr``, ``warmup`` and optionally ``run_id``
    (its MLflow run). A trial resumes from ``runs_root/<name>``'s last checkpoint, so a rung
    costs only the epochs since the previous one. ``max_concurrent`` (0: one per CPU, or per
    ``workers_per_trial`` CPUs) changes how fast, never what a trial computes.
    """
    import ray
    from ray import tune

    from components.training.loop import EPOCHS, read_rows

    launch.init_ray()
    launch.check_resources(max(1, workers_per_trial), bool(workers_per_trial and base["use_gpu"]),
                    f"tune.{algo}.workers_per_trial")
    # Tune's console output prints a configuration table and result paths for every Tuner, even
    # at verbose=0: a sweep prints its own line per trial and decision instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    per_trial = max(1, workers_per_trial)
    concurrent = max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // per_trial)
    trainable = tune.with_parameters(
        _sweep_trial, algo=algo, family=family, base=base, data_dir=data_dir, runs_root=runs_root, uri=uri,
        workers_per_trial=workers_per_trial, storage_path=storage_path, train_fraction=train_fraction)
    # A trial that launches a TorchTrainer holds almost nothing itself; its workers take the CPUs.
    resources = {"CPU": 1} if workers_per_trial == 0 else {"CPU": 0.01}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"trial": tune.grid_search(list(trials)), "epochs": epochs},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,  # our lines, not Tune's tables
                                  callbacks=[_RungProgress(algo, epochs, len(trials), metric)],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    out: dict[str, dict[str, float] | BaseException] = {}
    for result in tuner.fit():
        trial = result.config["trial"]["name"]
        if result.error is not None:
            out[trial] = launch.root_cause(result.error)
            continue
        rows = [e for e in read_rows(f"{runs_root}/{trial}/{EPOCHS}") if e["epoch"] == epochs - 1]
        out[trial] = rows[-1] if rows else RuntimeError(f"trial {trial} has no metrics for epoch {epochs - 1}")
    return out


def _RungProgress(algo: str, epochs: int, n: int, metric: str):
    """A Ray Tune callback (driver side): one line per trial that reached the rung, with an ETA."""
    from ray.tune import Callback

    class RungProgress(Callback):
        def __init__(self) -> None:
            self.t0, self.done = time.perf_counter(), 0

        def _end(self, trial, failed: bool) -> None:
            self.done += 1
            r, t = trial.last_result or {}, trial.config["trial"]
            value = f"{metric} {r[metric]:.4f}" if metric in r else ("failed" if failed else "no new epoch")
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / self.done * (n - self.done)
            print(f"tune {algo}: {t['name']} ({t['schedule']}, lr {t['lr']:.3g}, warm-up {t['warmup']}) at {epochs} "
                  f"epochs: {value}; {self.done}/{n} of the rung, elapsed {elapsed:.0f}s, eta {eta:.0f}s", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, True)

    return RungProgress()
