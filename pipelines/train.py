"""Stage train: one Ray Train run of ``train.<algo>`` on the dataset's shards, tracked in MLflow.

Reads ``train.<algo>``, ``runtime``, ``data/shards/<dataset>`` and, with ``train.<algo>.tuned``
(the default), the tune stage's winner ``models/<algo>/tune/best.yaml``: its schedule, peak LR
and warm-up replace the ones in params.yaml, at ``train.<algo>.epochs``. Writes
``models/<algo>/train/`` (safetensors weights + config), ``metrics/train/<algo>.json``
and ``plots/train/<algo>/`` (per-step and per-epoch tables, curves.png).

Epoch checkpoints live under the storage root, keyed by config, data version and the
code the stage depends on, so a run that was interrupted resumes from its last epoch when
the stage runs again, and a code change trains afresh.
"""

from __future__ import annotations

import time

from components import tracking
from components.config import to_dict
from components.evaluation import plots
from components.models import get_family
from components.training import checkpoint as ckpt
from components.training import launch, winner
from components.training.loop import (
    EPOCHS,
    HISTORY,
    LoopConfig,
    TrainingDiverged,
    read_rows,
)
from components.training.progress import Progress
from components.training.storage import written_whole
from pipelines import dag, lineage
from pipelines.layout import load, quiet_third_parties, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__)
    quiet_third_parties()
    p, layout = load(args, "train")
    algo = p.name
    cfg, lineage_tags = winner.with_winner(p.train, algo, layout.tuned(algo), layout.metrics("tune", algo),
                                           str(layout.tuned(algo).relative_to(layout.root)))
    family = get_family(p.family)
    data_version = lineage.data_version(layout.shards(p.dataset))
    storage = layout.storage_root(p.runtime.storage_root)
    worker_shards = layout.worker_shards(p.dataset, data_version, p.runtime.storage_root)
    # The stage's code deps, as dvc.yaml lists them: resuming is for interrupted runs of the same code.
    code = lineage.code_version(layout.root, dag.code_deps("train", p.raw, algo, layout.root))
    key = lineage.run_key(algo, to_dict(cfg), data_version, code)
    run_dir = f"{storage}/runs/{algo}/train-{key}"

    uri = tracking.configure(layout.root)
    client = tracking.MlflowClient()
    exp = tracking.experiment_id(algo, layout.root)
    run = client.create_run(exp, run_name=f"train-{key}", tags={
        "stage": "train", "algo": algo, "git_commit": lineage.git_commit(layout.root),
        "data_version": data_version,
        "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{p.dataset}"),
        "num_workers": str(cfg.num_workers), **lineage_tags})
    tracking.log_batch(client, run.info.run_id, params=tracking.params_of(to_dict(cfg)))
    chosen = (f"the sweep's {cfg.schedule.name} schedule, lr {cfg.lr:.4g}, warm-up {cfg.schedule.warmup} "
              f"(tune run {lineage_tags['tune_run_id'][:8]})" if cfg.tuned else "params.yaml's own schedule")
    print(f"train {algo}: {cfg.epochs} epochs, {max(cfg.num_workers, 1)} worker(s) "
          f"({'local mode' if cfg.num_workers == 0 else 'DDP'}) with {chosen}; run dir {run_dir}", flush=True)
    config = LoopConfig(algo, cfg, worker_shards, run_dir, family=p.family, hooks=(
        tracking.MlflowHook(uri, run.info.run_id), launch.RayTrainReport(cfg.checkpoint_every, cfg.epochs),
        Progress(cfg.epochs, family.VAL_METRIC)))
    t0 = time.perf_counter()
    try:
        launch.fit(config, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, storage_path=f"{storage}/ray",
                   name=f"{algo}-train-{key}", ray_num_cpus=p.runtime.ray_num_cpus,
                   max_failures=p.runtime.max_failures)
    except BaseException as exc:
        client.set_terminated(run.info.run_id, "FAILED")
        if isinstance(exc, TrainingDiverged):
            raise SystemExit(f"error: {exc}") from None
        raise
    wall = time.perf_counter() - t0

    out = layout.model(algo, "train")
    last = ckpt.export_latest(f"{run_dir}/checkpoints", out, {
        "algo": algo, "family": p.family, "candidate": "train", "data_version": data_version, "mlflow_run_id": run.info.run_id,
        **{k: v for k, v in lineage_tags.items() if k != "tuned"}})

    steps = read_rows(f"{run_dir}/{HISTORY}")
    epochs = read_rows(f"{run_dir}/{EPOCHS}")
    with written_whole(layout.plots("train", algo)) as plot_dir:
        for name, rows in plots.curve_tables(steps, epochs).items():
            lineage.write_csv(plot_dir / name, rows)
        plots.save(plots.training_curves(steps, epochs, f"{algo}: train", [family.VAL_METRIC, "val_accuracy"]),
                   plot_dir / "curves.png")
        client.log_artifact(run.info.run_id, str(plot_dir / "curves.png"))

    final = {k: v for k, v in last.items() if k != "resumed"}
    final["wall_time_s"] = wall
    lineage.write_json(layout.metrics("train", algo), final)
    client.set_terminated(run.info.run_id, "FINISHED")
    val = ", ".join(f"{k} {final[k]:.4f}" for k in dict.fromkeys(("val_loss", family.VAL_METRIC)) if k in final)
    print(f"train {algo}: {val} after {final['epoch'] + 1} epochs in {wall:.1f}s -> {out}")


if __name__ == "__main__":
    run_stage(main)
