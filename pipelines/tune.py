"""Stage tune: a sweep of learning-rate schedules x peak LR x warm-up; its winner is what train trains.

Reads ``tune.<algo>``, the ``train.<algo>`` keys a trial uses (all but ``epochs``,
``checkpoint_every``, ``val_every``, ``num_workers`` and ``tuned``), ``runtime`` and the shards. Writes
``models/<algo>/tune/best.yaml`` (the winner's schedule, peak LR and warm-up: nothing else,
so an unchanged winner leaves train as it was), ``models/<algo>/tune/sweep.json`` (every
trial, and the winner against params.yaml's own config at the same budget),
``metrics/tune/<algo>.json`` and ``plots/tune/<algo>/`` (trials.csv, lr.csv, sweep.png).
MLflow: one parent run, one nested run per trial with its config, its train metrics of every
epoch and val metrics at every rung's end (a trial validates nowhere else), its LR per step and
its status.

The sweep is synchronous successive halving (``components/training/sweep.py``): the same
params and data pick the same winner at any ``max_concurrent``. The sweep is one Ray Tune run
for all its rungs (``tune_run.sweep``), whose trial processes live across rungs; on one
machine a trial is a plain Tune function running the loop in its process
(``workers_per_trial: 0``), with ``workers_per_trial: N`` a TorchTrainer of N DDP workers. Trials resume from their run directories, keyed by config, data and code, so
an interrupted sweep goes on where it stopped.
"""

from __future__ import annotations

import time

from components import tracking
from components.config import replace, to_dict
from components.evaluation import plots
from components.models import get_family
from components.training import launch, tune_run, winner
from components.training import sweep as sha
from components.training import sweep_record as record
from components.training.storage import written_whole
from pipelines import dag, lineage
from pipelines.layout import load, quiet_third_parties, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__)
    quiet_third_parties()
    p, layout = load(args, "tune")
    algo, tcfg = p.name, p.tune
    family = get_family(p.family)
    metric, mode = family.VAL_METRIC, family.VAL_MODE  # what the rungs compare
    # Every trial's schedule spans the sweep's budget; keys it does not read (params.TRAIN_ONLY) are
    # fixed, so that the run key, like the stage, ignores them.
    base = replace(p.train, f"train.{algo}", epochs=tcfg.epochs, checkpoint_every=tcfg.epochs, val_every=tcfg.epochs,
                   num_workers=0, tuned=False)
    trials = sha.draw(tcfg.space, base, tcfg.samples_per_schedule, tcfg.seed)
    data_version = lineage.data_version(layout.shards(p.dataset))
    storage = layout.storage_root(p.runtime.storage_root)
    worker_shards = layout.worker_shards(p.dataset, data_version, p.runtime.storage_root)
    code = lineage.code_version(layout.root, dag.code_deps("tune", p.raw, algo, layout.root))
    plain = {"base": to_dict(base), "sweep": to_dict(tcfg)}  # the run key's, and the MLflow params'
    key = lineage.run_key(algo, plain["base"], plain["sweep"], data_version, code)
    runs_root = f"{storage}/runs/{algo}/tune-{key}"  # same key: an interrupted sweep resumes its trials

    uri = tracking.configure(layout.root)
    runs = record.SweepRuns(
        tracking.MlflowClient(), tracking.experiment_id(algo, layout.root), algo, f"tune-{key}", tags={
            "git_commit": lineage.git_commit(layout.root), "data_version": data_version,
            "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{p.dataset}")},
        params=plain, trials=trials, base=base)

    steps = sha.plan(len(trials), tcfg.grace_period, tcfg.reduction_factor, tcfg.epochs)
    print(f"tune {algo}: {len(trials)} trials (params.yaml's own + {tcfg.samples_per_schedule} x "
          f"{tcfg.space.schedule}), rungs (epochs, trials) {steps}: {sha.epochs_spent(steps)} epochs against "
          f"{len(trials) * tcfg.epochs} for all to the end, and params.yaml's own to the end as the control "
          f"once cut", flush=True)
    # Trials that run the loop in their own process launch no TorchTrainer: a local Ray without its dashboard.
    launch.init_ray(p.runtime.ray_num_cpus, dashboard=tcfg.workers_per_trial > 0)

    t0 = time.perf_counter()
    try:
        result = tune_run.sweep(
            trials, grace_period=tcfg.grace_period, reduction_factor=tcfg.reduction_factor, epochs=tcfg.epochs,
            metric=metric, mode=mode, algo=algo, family=p.family, base=base, data_dir=worker_shards,
            runs_root=runs_root, storage_path=f"{storage}/ray", name=f"{algo}-tune-{key}",
            max_concurrent=tcfg.max_concurrent, workers_per_trial=tcfg.workers_per_trial, uri=uri,
            train_fraction=tcfg.train_fraction, run_ids=runs.run_ids,
            on_rung=lambda epochs, kept, stopped: runs.decided(epochs, kept, stopped, metric))
    except RuntimeError as exc:
        runs.failed()
        raise SystemExit(f"error: tune.{algo}: {exc}; nothing was chosen") from None
    except BaseException:
        runs.failed()
        raise
    wall = time.perf_counter() - t0
    runs.trials_done(result)

    win, summary = result.winner, record.summary_of(result, tcfg.epochs)
    layout.tuned(algo).parent.mkdir(parents=True, exist_ok=True)
    layout.tuned(algo).write_text(winner.winner_yaml(win.trial.overrides(), algo))
    lineage.write_json(layout.sweep(algo), summary)
    tables, figure = record.tables_and_figure(result, runs_root, f"{algo}: {len(trials)} trials, winner "
                                              f"{win.trial.name} ({win.trial.schedule}, lr {win.trial.lr:.3g})")
    with written_whole(layout.plots("tune", algo)) as plot_dir:
        for name, rows in tables.items():
            lineage.write_csv(plot_dir / name, rows)
        plots.save(figure, plot_dir / "sweep.png")
        artifacts = [plot_dir / "sweep.png", plot_dir / "trials.csv", layout.sweep(algo)]
        metrics = record.stage_metrics(result, summary, wall, runs.parent_id)
        runs.finish(metrics, win, artifacts)
    lineage.write_json(layout.metrics("tune", algo), metrics)
    gain = summary["same_budget"]
    print(f"tune {algo}: winner {win.trial.name} {win.trial.schedule} lr {win.trial.lr:.4g} warm-up "
          f"{win.trial.warmup}: {metric} {win.at[win.epochs][metric]:.4f} at {win.epochs} epochs; params.yaml's own "
          f"{gain['baseline']:.4f} vs the winner's {gain['winner']:.4f} at {gain['epochs']} epochs; "
          f"{metrics['early_stopped']} early-stopped, {metrics['failed']} failed; {result.epochs_spent} epochs in "
          f"{wall:.1f}s -> {layout.tuned(algo).relative_to(layout.root)}")


if __name__ == "__main__":
    run_stage(main)
