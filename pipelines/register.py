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
from components.models import get_family
from components.params import dataset_name, family_name, train_config_from_dict
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

COMPONENTS = Path(__file__).resolve().parents[1] / "components"  # the code logged with every version
PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "safetensors", "numpy", "pyyaml", "tokenizers==0.23.2"]


def metric_rows(test: dict, primary: str) -> list[str]:
    """Markdown rows: each test metric with its floor (the data scored as a model) and ceiling
    where the family's evaluator measures them; the primary metric first and in bold."""
    bounds = {"_floor", "_floor_std", "_ceiling", "_std"}
    names = [k for k in test if isinstance(test[k], (int, float)) and not any(k.endswith(b) for b in bounds)]
    names.sort(key=lambda k: (k != primary, k))
    rows = ["| metric | test | floor | ceiling |", "|---|---|---|---|"]
    for k in names:
        floor = f"{test[k + '_floor']:.4g}" if f"{k}_floor" in test else ""
        if floor and f"{k}_floor_std" in test:
            floor += f" ± {test[k + '_floor_std']:.2g}"
        ceiling = f"{test[k + '_ceiling']:.4g}" if f"{k}_ceiling" in test else ""
        name = f"**{k}**" if k == primary else k
        rows.append(f"| {name} | {float(test[k]):.4g} | {floor} | {ceiling} |")
    return rows


def data_rows(stats: dict) -> list[str]:
    """Where the training data came from, as ``stats.json`` records it: source, format, path and
    the sha256 of every file ingested (an image folder: one digest over its files' sha256s)."""
    if "source" not in stats:
        return []
    rows = [f"| Data source | {stats['source']}" + (f" ({stats['format']})" if stats.get("format") else "")
            + (f" at `{stats['path']}`" if stats.get("path") else "") + " |"]
    digests = stats.get("source_sha256") or {}
    if digests:
        shown = [f"`{name}` {digest}" for name, digest in list(digests.items())[:8]]
        more = f" and {len(digests) - 8} more" if len(digests) > 8 else ""
        rows.append(f"| Ingested (sha256) | {'; '.join(shown)}{more} |")
    return rows


def sweep_rows(sweep: dict, algo: str) -> list[str]:
    """Where the schedule, peak LR and warm-up came from: the sweep's winner (and what it bought
    over params.yaml's own config, on val at the same budget) or params.yaml itself."""
    if "winner" not in sweep:
        return ["| Hyperparameters | params.yaml's own (no sweep result) |"]
    w, same, m = sweep["winner"], sweep["same_budget"], sweep["metric"]
    if not sweep["tuned"]:
        return [f"| Hyperparameters | params.yaml's own (train.{algo}.tuned: false); the sweep's winner was {w['trial']} |"]
    run = f", tune run `{sweep['tune_run_id']}`" if sweep.get("tune_run_id") else ""
    return [f"| Hyperparameters | the sweep's winner {w['trial']} of {sweep['trials']} trials{run}: "
            f"{w['schedule']['name']}, peak lr {w['lr']:.4g}, warm-up {w['schedule']['warmup']} |",
            f"| What the sweep bought | {m} on val after {same['epochs']} epochs: {same['winner']:.4f} against "
            f"{same['baseline']:.4f} for params.yaml's own {sweep['baseline']['schedule']['name']}, "
            f"lr {sweep['baseline']['lr']:.4g} |"]


def model_card(family, algo: str, version_meta: dict, test: dict, primary: str, mode: str, *,
               data_version: str, dvc_md5: str, commit: str, images: list[str], selected_by: list[str],
               data: dict | None = None, sweep: dict | None = None) -> str:
    """The registered version's description (MLflow renders it as markdown on the version page)."""
    train = version_meta["train"]
    keys = {k: train[k] for k in ("lr", "epochs", "batch_size", "num_workers") if k in train}
    model = {k: v for k, v in train["model"].items() if k != "tokenizer"}
    value = test.get(primary)
    lines = [
        # The versions table shows a description's first line: make it the summary.
        f"{algo}: test {primary} {value:.4f} ({version_meta['candidate']} candidate, data {data_version})"
        if isinstance(value, (int, float)) else f"{algo} ({version_meta['candidate']} candidate)",
        "",
        f"# {algo}",
        f"**Algorithm**: {family.PAPER}",
        "",
        "| | |",
        "|---|---|",
        f"| Candidate | {version_meta['candidate']} (selected on val by {', '.join(selected_by)}) |",
        f"| Data version | {data_version} (DVC md5 of the shards {dvc_md5}) |",
        *data_rows(data or {}),
        f"| Git commit | {commit} |",
        f"| Key params | {', '.join(f'{k} {v}' for k, v in keys.items())}; optimizer {train['optimizer']['name']}, "
        f"schedule {train['schedule']['name']} (warm-up {train['schedule'].get('warmup', 0)}) |",
        *sweep_rows(sweep or {}, algo),
        f"| Model | `{json.dumps(model)}` |",
        f"| Primary metric | {primary} ({'higher' if mode == 'max' else 'lower'} is better) |",
        "",
        "## Test metrics",
        "Floor: real training images scored as if they were samples (what a perfect generator gets; "
        "mean ± std over draws); ceiling: the same score for noise.\n"
        if any(k.endswith("_floor") for k in test) else "",
        *metric_rows(test, primary),
        "",
        "## Load",
        family.usage(algo),
        "",
        "## Aliases",
        f"`champion`: the best version of {algo} so far on test {primary}; `challenger`: the newest "
        f"version that did not beat it. Load either with `models:/{algo}@<alias>`.",
    ]
    if images:
        lines += ["", "## Images", "Artifacts of this version's run, under `card/`: "
                  + ", ".join(f"`{name}`" for name in images) + ", and the evaluation report `card/evaluate.md`."]
    return "\n".join(lines)


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
