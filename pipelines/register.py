"""Stage register: log the selected candidate as a new version of the registered model ``<algo>``.

Reads ``metrics/eval/<algo>.json``, ``models/<algo>/<selected>/`` and ``register``.
The new version gets ``champion`` only when it beats the current champion on the
family's primary test metric; otherwise it gets ``challenger``. Writes
``metrics/register/<algo>.json`` (version, alias, URI).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from components import tracking
from components.config import RegisterConfig, family_name, parse, train_config_from_dict
from components.models import get_family
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "safetensors", "numpy", "pyyaml"]


def model_card(family, algo: str, version_meta: dict, test: dict, primary: str, data_version: str) -> str:
    train = version_meta["train"]
    keys = {k: train[k] for k in ("lr", "epochs", "batch_size") if k in train}
    model = {k: v for k, v in train["model"].items() if k != "tokenizer"}
    return "\n".join([
        f"# {algo}",
        f"**Algorithm**: {family.PAPER}",
        f"**Candidate**: {version_meta['candidate']} (selected on the val split)",
        f"**Data version**: {data_version}",
        f"**Key params**: {json.dumps(keys)}; optimizer {train['optimizer']['name']}, "
        f"schedule {train['schedule']['name']}; model {json.dumps(model)}",
        "**Test metrics**: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)),
        f"**Primary metric**: {primary}",
        f"**Load**: {family.usage(algo)}",
    ])


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
    commit = lineage.git_commit(layout.root)
    dataset = raw["algorithms"][algo]["dataset"]
    tags = {"git_commit": commit, "data_version": meta["data_version"],
            "dvc_data_md5": lineage.dvc_md5(layout.root, f"data/shards/{dataset}"),
            "params_hash": lineage.run_key(meta["train"]), "candidate": selected,
            "source_run_id": meta.get("mlflow_run_id", ""),
            **tracking.metric_tags(test)}
    import mlflow

    with mlflow.start_run(experiment_id=exp, run_name=f"register-{selected}", tags={"stage": "register", "algo": algo}):
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in test.items()})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).resolve().parents[1] / "components" / "pyfunc_entry.py"),
            artifacts={"weights": str(weights)}, code_paths=[str(Path(__file__).resolve().parents[1] / "components")],
            signature=signature, input_example=example, pip_requirements=PIP_REQUIREMENTS)
    version, alias, previous = tracking.register(
        info.model_uri, algo, tags=tags, description=model_card(family, algo, meta, test, f"{metric} ({mode})", meta["data_version"]),
        metric=metric, value=value, mode=mode, min_improvement=rcfg.min_improvement)
    result = {"version": int(version.version), "alias": alias, f"test_{metric}": value,
              "previous_champion": int(previous.version) if previous else 0}
    lineage.write_json(layout.metrics("register", algo), result)
    was = f" (champion stays v{previous.version})" if alias == tracking.CHALLENGER else ""
    print(f"register {algo}: version {version.version} -> @{alias}{was}; test {metric} {value:.4f}")


if __name__ == "__main__":
    run_stage(main)
