"""Stage tune: an ASHA sweep of learning-rate schedules x peak LR x warm-up, selected on val.

Reads ``tune.<algo>``, ``train.<algo>`` (the base every trial starts from), ``runtime``
and the shards. Writes ``models/<algo>/tune/`` (the best trial's weights),
``metrics/tune/<algo>.json`` and ``plots/tune/<algo>/`` (trials.csv, sweep.png). MLflow:
one parent run with one nested run per trial.

Each trial runs the same ``train_loop_per_worker`` as train. On one machine a trial is a
plain Tune function running the loop in-process (``workers_per_trial: 0``; 5-8x cheaper
on 2 cores than a worker group per trial); with ``workers_per_trial: N`` each trial
launches a TorchTrainer of N DDP workers that reports to Tune through TuneReportCallback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from components import tracking
from components.config import (
    family_name,
    runtime_config,
    to_dict,
    train_config,
    tune_config,
)
from components.evaluation import plots
from components.models import get_family
from components.training import checkpoint as ckpt
from components.training import launch
from components.training import storage as run_storage
from components.training.loop import HISTORY, read_rows, train_loop_per_worker
from pipelines import lineage
from pipelines.layout import load, quiet_third_parties, run_stage, stage_args


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base ``train`` section with one trial's schedule, peak LR and warm-up."""
    warmup = params["warmup"]
    if params["schedule"] == "inverse_sqrt":
        warmup = max(warmup, 0.05)  # the schedule is undefined without a warm-up
    return {**base, "lr": params["lr"], "schedule": {**base["schedule"], "name": params["schedule"], "warmup": warmup}}


def run_trial(params: dict[str, Any], *, algo: str, family: str, base: dict[str, Any], data_dir: str, runs_root: str,
              workers_per_trial: int, storage: str) -> None:
    """One Tune trial (runs in a Ray worker process)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    config = {"algo": algo, "family": family, "train": trial_config(base, params), "data_dir": data_dir,
              "run_dir": f"{runs_root}/{trial_id}"}
    if workers_per_trial == 0:
        train_loop_per_worker({**config, "hooks": [launch.TuneReport()], "single_thread": True})
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        launch.fit({**config, "hooks": [launch.RayTrainReport()]}, num_workers=workers_per_trial,
                   use_gpu=base["use_gpu"], storage_path=f"{storage}/ray", name=f"{algo}-trial-{trial_id}",
                   callbacks=[TuneReportCallback()])


def trial_progress(algo: str, n_trials: int, max_t: int, metric: str):
    """A Ray Tune callback (driver side): one line per finished trial with counts and an ETA."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.t0, self.done, self.running = time.perf_counter(), 0, 0

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running += 1

        def _end(self, trial, how: str) -> None:
            self.done, self.running = self.done + 1, max(self.running - 1, 0)
            r = trial.last_result or {}
            epochs = int(r.get("training_iteration", 0))
            how = how or ("early-stopped" if epochs < max_t else "completed")
            value = f"{metric} {r[metric]:.4f}" if metric in r else "no result"
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / self.done * (n_trials - self.done)
            print(f"tune {algo}: trial {self.done}/{n_trials} {how} ({trial.config['schedule']}, "
                  f"lr {trial.config['lr']:.3g}: {value} after {epochs} epochs); {self.running} running, "
                  f"{n_trials - self.done - self.running} pending; elapsed {elapsed:.0f}s, eta {eta:.0f}s", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, "")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, "failed")

    return TrialProgress()


def main() -> None:
    args = stage_args(__doc__)
    quiet_third_parties()
    raw, layout = load(args)
    algo = args.algo
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    cfg, tcfg = train_config(raw, algo), tune_config(raw, algo)
    fname = family_name(raw, algo)
    family = get_family(fname)
    metric, mode = family.VAL_METRIC, family.VAL_MODE  # what ASHA compares after every epoch
    sign = 1.0 if mode == "max" else -1.0
    base = {**to_dict(cfg), "epochs": tcfg.epochs, "val_every": 1}  # ASHA compares every epoch
    dataset = raw["algorithms"][algo]["dataset"]
    shard_dir = layout.shards(dataset)
    data_version = lineage.data_version(shard_dir)
    runtime = runtime_config(raw)
    storage = layout.storage_root(runtime.storage_root)
    worker_shards = layout.worker_shards(dataset, data_version, runtime.storage_root)
    key = lineage.run_key(algo, base, to_dict(tcfg), data_version)
    runs_root = f"{storage}/runs/{algo}/tune-{key}"
    run_storage.remove(runs_root)  # a sweep is re-run whole, not resumed

    uri = tracking.configure(layout.root)
    client = tracking.MlflowClient()
    exp = tracking.experiment_id(algo, layout.root)
    parent = client.create_run(exp, run_name=f"tune-{key}", tags={
        "stage": "tune", "algo": algo, "git_commit": lineage.git_commit(layout.root),
        "data_version": data_version, "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{dataset}")})
    tracking.log_batch(client, parent.info.run_id, params=tracking.params_of(
        {"base": base, "sweep": to_dict(tcfg)}))

    launch.init_ray(runtime.ray_num_cpus)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_trial = max(1, tcfg.workers_per_trial)
    concurrent = tcfg.max_concurrent or max(1, cpus // per_trial)
    n_trials = len(tcfg.space.schedule) * tcfg.samples_per_schedule
    print(f"tune {algo}: {n_trials} trials ({tcfg.space.schedule} x {tcfg.samples_per_schedule}), "
          f"{tcfg.epochs} epochs max, ASHA grace {tcfg.grace_period}, {concurrent} at a time", flush=True)

    trainable = tune.with_parameters(
        run_trial, algo=algo, family=fname, base=base, data_dir=worker_shards, runs_root=runs_root,
        workers_per_trial=tcfg.workers_per_trial, storage=storage)
    # A trial that launches a TorchTrainer holds almost nothing itself; its workers take the CPUs.
    resources = {"CPU": 1} if tcfg.workers_per_trial == 0 else {"CPU": 0.01}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"schedule": tune.grid_search(tcfg.space.schedule),
                     "lr": tune.loguniform(*tcfg.space.lr),
                     "warmup": tune.choice(tcfg.space.warmup)},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=tcfg.samples_per_schedule,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=tcfg.epochs,
                                    grace_period=tcfg.grace_period, reduction_factor=tcfg.reduction_factor),
            search_alg=BasicVariantGenerator(random_state=tcfg.seed),
            max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{algo}-tune-{key}", storage_path=f"{storage}/ray", verbose=0,  # our lines, not Tune's tables
            callbacks=[tracking.tune_callback(uri, exp, parent.info.run_id, runs_root),
                       trial_progress(algo, n_trials, tcfg.epochs, metric)],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    t0 = time.perf_counter()
    try:
        results = tuner.fit()
    except BaseException:
        client.set_terminated(parent.info.run_id, "FAILED")
        raise
    wall = time.perf_counter() - t0

    trials = []
    for r in results:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(r.path).name
        trials.append({"trial_id": trial_id, **r.config, "epochs_run": int(m.get("training_iteration", 0)),
                       "val_loss": m.get("val_loss", float("nan")),
                       "status": "error" if r.error else ("early-stopped" if m.get("training_iteration", 0) < tcfg.epochs else "completed"),
                       "error": str(r.error).splitlines()[0][:200] if r.error else "",
                       metric: m.get(metric, float("nan"))})  # last column: what dvc plots draws
    ok = [t for t in trials if not t["error"] and t[metric] == t[metric]]
    if not ok:
        client.set_terminated(parent.info.run_id, "FAILED")
        raise SystemExit(f"error: all {len(trials)} trials of tune.{algo} failed; first error: {trials[0]['error']}")
    best = max(ok, key=lambda t: (sign * t[metric], -t["val_loss"]))

    ckpt.export_latest(f"{runs_root}/{best['trial_id']}/checkpoints", layout.model(algo, "tune"), {
        "algo": algo, "family": fname, "candidate": "tune", "data_version": data_version, "mlflow_run_id": parent.info.run_id,
        "trial_id": best["trial_id"]})

    for t in trials:
        t["steps"] = read_rows(f"{runs_root}/{t['trial_id']}/{HISTORY}")
    with run_storage.written_whole(layout.plots("tune", algo)) as plot_dir:
        lineage.write_csv(plot_dir / "trials.csv", [{k: v for k, v in t.items() if k not in ("error", "steps")}
                                                    for t in trials])
        lineage.write_csv(plot_dir / "lr.csv", [{"trial": f"{t['schedule']}-{t['trial_id'][-5:]}", "step": r["step"],
                                                 "lr": r["lr"]} for t in trials for r in t["steps"]])
        plots.save(plots.sweep(trials, metric, f"{algo}: tune"), plot_dir / "sweep.png")
        client.log_artifact(parent.info.run_id, str(plot_dir / "sweep.png"))
        client.log_artifact(parent.info.run_id, str(plot_dir / "trials.csv"))

    summary = {"best_trial": best["trial_id"], "best_schedule": best["schedule"], "best_lr": best["lr"],
               "best_warmup": best["warmup"], f"best_{metric}": best[metric],
               "best_val_loss": best["val_loss"], "trials": len(trials),
               "early_stopped": sum(t["status"] == "early-stopped" for t in trials),
               "failed": sum(t["status"] == "error" for t in trials), "wall_time_s": wall}
    lineage.write_json(layout.metrics("tune", algo), summary)
    tracking.log_batch(client, parent.info.run_id, metrics=[
        tracking.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary.items()
        if isinstance(v, (int, float))], tags={"best_trial": best["trial_id"], "best_schedule": best["schedule"]})
    client.set_terminated(parent.info.run_id, "FINISHED")
    print(f"tune {algo}: best {best['schedule']} lr={best['lr']:.3g} warmup={best['warmup']} "
          f"{metric} {best[metric]:.4f}; {summary['early_stopped']} early-stopped, "
          f"{summary['failed']} failed, {wall:.1f}s")


if __name__ == "__main__":
    run_stage(main)
