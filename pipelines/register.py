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
from components.data.shards import read_stats
from components.modelcard import model_card
from components.models import get_family
from components.params import train_config_from_dict
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

COMPONENTS = Path(__file__).resolve().parents[1] / "components"  # the code logged with every version
PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "safetensors", "numpy", "pyyaml", "tokenizers==0.23.2"]


def main() -> None:
    args = stage_args(__doc__)
    p, layout = load(args, "register")
    algo = p.name
    family = get_family(p.family)
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
    cfg = train_config_from_dict(p.family, meta["train"]).model
    example, signature = family.serving_example(cfg), family.signature(cfg)

    tracking.configure(layout.root)
    exp = tracking.experiment_id(algo, layout.root)
    client = tracking.MlflowClient()
    commit = lineage.trained_commit(client, meta.get("mlflow_run_id", ""), layout.root)
    data_stats = read_stats(layout.shards(p.dataset))
    # One trained model, scored one way and served by the same code, is one version: a register
    # interrupted after creating it is finished by the next run instead of leaving a second copy.
    key = lineage.run_key(meta.get("mlflow_run_id", ""), meta["data_version"], selected, test,
                          lineage.code_version(COMPONENTS.parent, [COMPONENTS.name]))
    tags = {"data_source": str(data_stats.get("source", p.dataset)), "git_commit": commit, "data_version": meta["data_version"],
            "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{p.dataset}"),
            "params_hash": lineage.run_key(meta["train"]), "candidate": selected,
            "source_run_id": meta.get("mlflow_run_id", ""),
            "tuned": str(bool(summary.get("sweep", {}).get("tuned"))).lower(),
            "tune_run_id": meta.get("tune_run_id", ""), "tune_trial": meta.get("tune_trial", ""),
            tracking.REGISTER_KEY: key, **tracking.metric_tags(test)}

    # The family's images of the selected candidate (confusion matrix, sample grid...) and the report.
    images = sorted(layout.plots("eval", algo).glob(f"*_{selected}.png"))
    card = images + ([layout.report(algo)] if layout.report(algo).exists() else [])
    existing = tracking.registered_version(algo, key)
    if existing is not None:
        print(f"register {algo}: version {existing.version} already holds this model (an earlier register "
              f"{'finished' if existing.aliases else 'was interrupted before its alias'}); finishing it")
        model_uri = existing.source
    else:
        model_uri = tracking.log_model(
            exp, algo, key, f"register-{selected}", metrics=test, card=card,
            python_model=str(COMPONENTS / "pyfunc_entry.py"), artifacts={"weights": str(weights)},
            code_paths=[str(COMPONENTS)], signature=signature, input_example=example,
            pip_requirements=[*PIP_REQUIREMENTS, *getattr(family, "SERVING_REQUIREMENTS", ())])
    version, alias, previous = tracking.register(
        model_uri, algo, tags=tags, description=model_card(
            family, algo, meta, test, metric, mode, data_version=meta["data_version"], dvc_md5=tags["dvc_data_md5"],
            commit=commit, images=[image.name for image in images], selected_by=summary.get("selected_by", []),
            usage=family.usage(algo, cfg),
            data=data_stats, sweep=summary.get("sweep"), compared=compared(layout, p, family)),
        metric=metric, value=value, mode=mode, min_improvement=p.register.min_improvement, version=existing)
    tracking.failpoint("register:aliased")
    result = {"version": int(version.version), "alias": alias, f"test_{metric}": value,
              "previous_champion": int(previous.version) if previous else 0}
    lineage.write_json(layout.metrics("register", algo), result)
    was = f" (champion stays v{previous.version})" if alias == tracking.CHALLENGER else ""
    print(f"register {algo}: version {version.version} -> @{alias}{was}; test {metric} {value:.4f}")


def compared(layout, p, family) -> dict:
    """The compare stage's pairs of this algorithm (``metrics/compare/<dataset>.json``), when its
    dataset has other image generators; else nothing."""
    path = layout.metrics("compare", p.dataset)
    if getattr(family, "GENERATES", None) != "images" or not path.exists():
        return {}
    pairs = json.loads(path.read_text())["pairs"]
    return {k: v for k, v in pairs.items() if p.name in (v["a"], v["b"])}


if __name__ == "__main__":
    run_stage(main)
