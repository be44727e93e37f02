"""Stage register: log the selected candidate as a new version of the registered model ``<algo>``.

Reads ``metrics/eval/<algo>.json``, ``models/<algo>/train/`` and ``register``. The model
card says which hyperparameters trained it (the sweep's winner, naming the tune run) and
what they bought over params.yaml's own on val.
The new version gets ``champion`` only when it beats the current champion on the
family's primary test metric; otherwise it gets ``challenger``. Writes
``metrics/register/<algo>.json`` (version, alias, URI).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from components import tracking
from components.config import RegisterConfig, parse
from components.data.shards import read_stats
from components.modelcard import model_card
from components.models import get_family
from components.params import dataset_name, family_name, train_config_from_dict
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

COMPONENTS = Path(__file__).resolve().parents[1] / "components"  # the code logged with every version
PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "safetensors", "numpy", "pyyaml", "tokenizers==0.23.2"]


def main() -> None:
    args = stage_args(__doc__)
    raw, layout = load(args)
    algo = args.algo
    rcfg = parse(RegisterConfig, raw.get("register"), "register")
    fname = family_name(raw, algo)
    family = get_family(fname)
    summary = json.loads(layout.metrics("eval", algo).read_text())
    selected = summary.get("selected")
    if not selected or not summary[selected].get("valid"):
        raise SystemExit(f"error: evaluate selected no valid {algo} candidate; nothing registered")
    test = {k: v for k, v in summary[selected].items() if k != "valid" and not k.startswith("val_")}
    metric, mode = summary["primary_metric"], summary["mode"]
    value = float(test[metric])
    if not math.isfinite(value):
        raise SystemExit(f"error: {algo} {metric} is {value}; a diverged run is never registered")

    weights = layout.model(algo, selected)
    meta = json.loads((weights / "config.json").read_text())
    cfg = train_config_from_dict(fname, meta["train"]).model
    example, signature = family.serving_example(cfg), family.signature(cfg)

    tracking.configure(layout.root)
    exp = tracking.experiment_id(algo, layout.root)
    import mlflow

    client = tracking.MlflowClient()
    commit = trained_commit(client, meta.get("mlflow_run_id", ""), layout.root)
    dataset = dataset_name(raw, algo)
    data_stats = read_stats(layout.shards(dataset))
    # One trained model, scored one way and served by the same code, is one version: a register
    # interrupted after creating it is finished by the next run instead of leaving a second copy.
    key = lineage.run_key(meta.get("mlflow_run_id", ""), meta["data_version"], selected, test,
                          lineage.code_version(COMPONENTS.parent, [COMPONENTS.name]))
    tags = {"data_source": str(data_stats.get("source", dataset)),"git_commit": commit, "data_version": meta["data_version"],
            "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{dataset}"),
            "params_hash": lineage.run_key(meta["train"]), "candidate": selected,
            "source_run_id": meta.get("mlflow_run_id", ""),
            "tuned": str(bool(summary.get("sweep", {}).get("tuned"))).lower(),
            "tune_run_id": meta.get("tune_run_id", ""), "tune_trial": meta.get("tune_trial", ""),
            tracking.REGISTER_KEY: key, **tracking.metric_tags(test)}

    # The family's images of the selected candidate (confusion matrix, sample grid...) and the report.
    images = sorted(layout.plots("eval", algo).glob(f"*_{selected}.png"))
    existing = tracking.registered_version(algo, key)
    if existing is not None:
        print(f"register {algo}: version {existing.version} already holds this model (an earlier register "
              f"{'finished' if existing.aliases else 'was interrupted before its alias'}); finishing it")
        model_uri = existing.source
    else:
        for run in client.search_runs([exp], f"tags.{tracking.REGISTER_KEY} = '{key}' and attributes.status = 'RUNNING'"):
            client.set_terminated(run.info.run_id, "KILLED")
            print(f"register {algo}: run {run.info.run_id} of an interrupted register marked KILLED")
        with mlflow.start_run(experiment_id=exp, run_name=f"register-{selected}",
                              tags={"stage": "register", "algo": algo, tracking.REGISTER_KEY: key}):
            mlflow.log_metrics({f"test_{k}": float(v) for k, v in test.items()})
            for image in images:
                mlflow.log_artifact(str(image), artifact_path="card")
            if layout.report(algo).exists():
                mlflow.log_artifact(str(layout.report(algo)), artifact_path="card")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(COMPONENTS / "pyfunc_entry.py"),
                artifacts={"weights": str(weights)}, code_paths=[str(COMPONENTS)],
                signature=signature, input_example=example, pip_requirements=PIP_REQUIREMENTS)
            tracking.failpoint("register:logged")
        model_uri = info.model_uri
    version, alias, previous = tracking.register(
        model_uri, algo, tags=tags, description=model_card(
            family, algo, meta, test, metric, mode, data_version=meta["data_version"], dvc_md5=tags["dvc_data_md5"],
            commit=commit, images=[p.name for p in images], selected_by=summary.get("selected_by", []),
            data=data_stats, sweep=summary.get("sweep")),
        metric=metric, value=value, mode=mode, min_improvement=rcfg.min_improvement, version=existing)
    tracking.failpoint("register:aliased")
    result = {"version": int(version.version), "alias": alias, f"test_{metric}": value,
              "previous_champion": int(previous.version) if previous else 0}
    lineage.write_json(layout.metrics("register", algo), result)
    was = f" (champion stays v{previous.version})" if alias == tracking.CHALLENGER else ""
    print(f"register {algo}: version {version.version} -> @{alias}{was}; test {metric} {value:.4f}")


def trained_commit(client, run_id: str, root: Path) -> str:
    """The commit of the code that trained the model, as its train run recorded it (a commit made
    since, or outputs a repro rewrote, do not change it); this checkout's when the run has none."""
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            commit = client.get_run(run_id).data.tags.get("git_commit")
        except MlflowException:  # the run is in another store (a copied registry): fall back
            commit = None
        if commit and commit != "unknown":
            return commit
    return lineage.git_commit(root)


if __name__ == "__main__":
    run_stage(main)
