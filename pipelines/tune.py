"""Stage tune: a sweep of learning-rate schedules x peak LR x warm-up; its winner is what train trains.

Reads ``tune.<algo>``, the ``train.<algo>`` keys a trial uses (all but ``epochs``,
``checkpoint_every``, ``num_workers`` and ``tuned``), ``runtime`` and the shards. Writes
``models/<algo>/tune/best.yaml`` (the winner's schedule, peak LR and warm-up: nothing else,
so an unchanged winner leaves train as it was), ``models/<algo>/tune/sweep.json`` (every
trial, and the winner against params.yaml's own config at the same budget),
``metrics/tune/<algo>.json`` and ``plots/tune/<algo>/`` (trials.csv, lr.csv, sweep.png).
MLflow: one parent run, one nested run per trial with its config, every metric of every
epoch, its LR per step and its status.

The sweep is synchronous successive halving (``components/training/sweep.py``): the same
params and data pick the same winner at any ``max_concurrent``. Each rung is one Ray Tune
run (``launch.sweep_rung``); on one machine a trial is a plain Tune function running the
loop in-process (``workers_per_trial: 0``), with ``workers_per_trial: N`` a TorchTrainer of
N DDP workers. Trials resume from their run directories, keyed by config, data and code, so
an interrupted sweep goes on where it stopped.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from components import tracking
from components.config import to_dict
from components.evaluation import plots
from components.models import get_family
from components.params import (
    dataset_name,
    family_name,
    runtime_config,
    train_config,
    tune_config,
)
from components.training import launch
from components.training import sweep as sha
from components.training.loop import HISTORY, read_rows
from components.training.storage import written_whole
from pipelines import dag, lineage
from pipelines.layout import load, quiet_third_parties, run_stage, stage_args


def summary_of(result: sha.Sweep, tcfg: Any) -> dict[str, Any]:
    """``sweep.json``: what the sweep found, with nothing that differs between two runs of it."""
    metric, win, base = result.metric, result.winner, result.baseline()
    gain = result.gain()

    def last(o: sha.Outcome) -> float:
        return o.at[o.epochs][metric] if o.at else float("nan")

    return {
        "metric": metric, "mode": result.mode,
        "winner": {"trial": win.trial.name, **win.trial.overrides(), "epochs": win.epochs, metric: last(win)},
        "baseline": {"trial": base.trial.name, **base.trial.overrides(), "epochs": base.epochs, "status": base.status,
                     metric: last(base)},
        # Both at the last rung the baseline reached: what the sweep bought over params.yaml's own config.
        "same_budget": gain,
        "trials": len(result.outcomes), "rungs": [list(s) for s in result.steps],
        "epochs_spent": result.epochs_spent, "epochs_if_all_ran_to_the_end": len(result.outcomes) * tcfg.epochs,
        "outcomes": [{"trial": o.trial.name, "schedule": o.trial.schedule, "lr": o.trial.lr, "warmup": o.trial.warmup,
                      "status": o.status, "epochs": o.epochs, metric: last(o), "error": o.error}
                     for o in result.outcomes],
    }


def main() -> None:
    args = stage_args(__doc__)
    quiet_third_parties()
    raw, layout = load(args)
    algo = args.algo
    cfg, tcfg = train_config(raw, algo), tune_config(raw, algo)
    fname = family_name(raw, algo)
    family = get_family(fname)
    metric, mode = family.VAL_METRIC, family.VAL_MODE  # what the rungs compare
    # Every trial's schedule spans the sweep's budget; keys it does not read (dag.TRAIN_ONLY) are
    # fixed, so that the run key, like the stage, ignores them.
    base = {**to_dict(cfg), "epochs": tcfg.epochs, "checkpoint_every": tcfg.epochs, "num_workers": 0, "tuned": False}
    trials = sha.draw(tcfg.space, base, tcfg.samples_per_schedule, tcfg.seed)
    dataset = dataset_name(raw, algo)
    shard_dir = layout.shards(dataset)
    data_version = lineage.data_version(shard_dir)
    runtime = runtime_config(raw)
    storage = layout.storage_root(runtime.storage_root)
    worker_shards = layout.worker_shards(dataset, data_version, runtime.storage_root)
    code = lineage.code_version(layout.root, dag.code_deps("tune", raw, algo, layout.root))
    key = lineage.run_key(algo, base, to_dict(tcfg), data_version, code)
    runs_root = f"{storage}/runs/{algo}/tune-{key}"  # same key: an interrupted sweep resumes its trials

    uri = tracking.configure(layout.root)
    client = tracking.MlflowClient()
    exp = tracking.experiment_id(algo, layout.root)
    parent = client.create_run(exp, run_name=f"tune-{key}", tags={
        "stage": "tune", "algo": algo, "git_commit": lineage.git_commit(layout.root),
        "data_version": data_version, "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{dataset}")})
    tracking.log_batch(client, parent.info.run_id, params=tracking.params_of({"base": base, "sweep": to_dict(tcfg)}))
    run_ids = {}
    for t in trials:
        run = client.create_run(exp, run_name=f"{t.name} {t.schedule} lr {t.lr:.3g}", tags={
            "mlflow.parentRunId": parent.info.run_id, "stage": "tune", "algo": algo, "trial": t.name,
            "status": "running", **({"baseline": "params.yaml's own config"} if t.name == "t00" else {})})
        tracking.log_batch(client, run.info.run_id, params=tracking.params_of(t.apply(base)))
        run_ids[t.name] = run.info.run_id

    steps = sha.plan(len(trials), tcfg.grace_period, tcfg.reduction_factor, tcfg.epochs)
    print(f"tune {algo}: {len(trials)} trials (params.yaml's own + {tcfg.samples_per_schedule} x "
          f"{tcfg.space.schedule}), rungs (epochs, trials) {steps}: {sha.epochs_spent(steps)} epochs against "
          f"{len(trials) * tcfg.epochs} for all to the end", flush=True)
    launch.init_ray(runtime.ray_num_cpus)

    def run_rung(live: list[sha.Trial], epochs: int) -> dict:
        return launch.sweep_rung(
            [{**vars(t), "run_id": run_ids[t.name]} for t in live], epochs, algo=algo, family=fname, base=base,
            data_dir=worker_shards, runs_root=runs_root, storage_path=f"{storage}/ray",
            name=f"{algo}-tune-{key}-to-{epochs}", max_concurrent=tcfg.max_concurrent,
            workers_per_trial=tcfg.workers_per_trial, uri=uri, train_fraction=tcfg.train_fraction, metric=metric)

    def decided(epochs: int, kept: list[sha.Outcome], stopped: list[sha.Outcome]) -> None:
        for o in stopped:  # its run is over: the next rungs go on without it
            client.set_tag(run_ids[o.trial.name], "status", sha.STOPPED)
            client.set_terminated(run_ids[o.trial.name], "KILLED")
        names = ", ".join(f"{o.trial.name} {o.at[epochs][metric]:.4f}" for o in kept)
        print(f"tune {algo}: at {epochs} epochs " + (f"{len(kept)} go on ({names}), {len(stopped)} stopped"
                                                    if stopped else f"the winner is {kept[0].trial.name} ({names})"),
              flush=True)

    t0 = time.perf_counter()
    try:
        result = sha.successive_halving(
            trials, run_rung, grace_period=tcfg.grace_period, reduction_factor=tcfg.reduction_factor,
            epochs=tcfg.epochs, metric=metric, mode=mode, on_rung=decided)
    except RuntimeError as exc:
        client.set_terminated(parent.info.run_id, "FAILED")
        raise SystemExit(f"error: tune.{algo}: {exc}; nothing was chosen") from None
    except BaseException:
        client.set_terminated(parent.info.run_id, "FAILED")
        raise
    wall = time.perf_counter() - t0
    for o in result.outcomes:
        if o.status != sha.STOPPED:
            client.set_tag(run_ids[o.trial.name], "status", o.status)
            client.set_terminated(run_ids[o.trial.name], "FAILED" if o.status == sha.FAILED else "FINISHED")

    win, summary = result.winner, summary_of(result, tcfg)
    layout.tuned(algo).parent.mkdir(parents=True, exist_ok=True)
    layout.tuned(algo).write_text(
        f"# train.{algo} overrides chosen by the tune stage's sweep (train.{algo}.tuned: true trains with them)\n"
        + yaml.safe_dump(win.trial.overrides(), sort_keys=True))
    lineage.write_json(layout.sweep(algo), summary)

    rows = []
    for o in result.outcomes:
        last = o.at.get(o.epochs, {})
        rows.append({"trial": o.trial.name, "schedule": o.trial.schedule, "lr": o.trial.lr, "warmup": o.trial.warmup,
                     "status": o.status, "epochs": o.epochs, "val_loss": last.get("val_loss", float("nan")),
                     metric: last.get(metric, float("nan"))})  # last column: what dvc plots draws
    with written_whole(layout.plots("tune", algo)) as plot_dir:
        lineage.write_csv(plot_dir / "trials.csv", rows)
        curves = {o.trial.name: read_rows(f"{runs_root}/{o.trial.name}/{HISTORY}") for o in result.outcomes}
        lineage.write_csv(plot_dir / "lr.csv", [{"trial": f"{o.trial.name}-{o.trial.schedule}", "step": r["step"],
                                                 "lr": r["lr"]} for o in result.outcomes for r in curves[o.trial.name]])
        figure = [{"trial": o.trial.name, "schedule": o.trial.schedule, "lr": o.trial.lr, "steps": curves[o.trial.name],
                   "at": {e: m.get(metric, float("nan")) for e, m in o.at.items()},
                   "winner": o is win, "baseline": o.trial.name == "t00"} for o in result.outcomes]
        plots.save(plots.sweep(figure, metric, f"{algo}: {len(trials)} trials, winner {win.trial.name} "
                                              f"({win.trial.schedule}, lr {win.trial.lr:.3g})"), plot_dir / "sweep.png")
        for name in ("sweep.png", "trials.csv"):
            client.log_artifact(parent.info.run_id, str(plot_dir / name))
    client.log_artifact(parent.info.run_id, str(layout.sweep(algo)))

    gain = summary["same_budget"]
    metrics = {"best_trial": win.trial.name, "best_schedule": win.trial.schedule, "best_lr": win.trial.lr,
               "best_warmup": win.trial.warmup, f"best_{metric}": win.at[win.epochs][metric],
               "baseline_epochs": gain["epochs"], f"baseline_{metric}": gain["baseline"],
               f"winner_{metric}_at_baseline_epochs": gain["winner"], "trials": len(trials),
               "early_stopped": sum(o.status == sha.STOPPED for o in result.outcomes),
               "failed": sum(o.status == sha.FAILED for o in result.outcomes),
               "epochs_spent": result.epochs_spent, "wall_time_s": wall, "mlflow_run_id": parent.info.run_id}
    lineage.write_json(layout.metrics("tune", algo), metrics)
    tracking.log_batch(client, parent.info.run_id, metrics=[
        tracking.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()
        if isinstance(v, (int, float))], tags={
            "best_trial": win.trial.name, "best_schedule": win.trial.schedule, "best_lr": repr(win.trial.lr),
            "best_warmup": repr(win.trial.warmup), "best_run_id": run_ids[win.trial.name]})
    client.set_terminated(parent.info.run_id, "FINISHED")
    print(f"tune {algo}: winner {win.trial.name} {win.trial.schedule} lr {win.trial.lr:.4g} warm-up "
          f"{win.trial.warmup}: {metric} {win.at[win.epochs][metric]:.4f} at {win.epochs} epochs; params.yaml's own "
          f"{gain['baseline']:.4f} vs the winner's {gain['winner']:.4f} at {gain['epochs']} epochs; "
          f"{metrics['early_stopped']} early-stopped, {metrics['failed']} failed; {result.epochs_spent} epochs in "
          f"{wall:.1f}s -> {layout.tuned(algo).relative_to(layout.root)}")


if __name__ == "__main__":
    run_stage(main)
