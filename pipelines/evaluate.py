"""Stage evaluate: val and test metrics of the trained model, and what the sweep bought.

Reads ``models/<algo>/train/`` (trained with the sweep's winner unless
``train.<algo>.tuned: false``), ``models/<algo>/tune/sweep.json`` and the dataset's val and
test shards. Writes ``metrics/eval/<algo>.json`` (test and val metrics, validity, the
family's primary metric and direction, the sweep's winner against params.yaml's own config
at the same budget), ``plots/eval/<algo>/`` (the family's images) and
``reports/<algo>/evaluate.md`` (tables: per-class accuracy, sample translations...). The
tune trials' own weights are not candidates: the sweep chooses hyperparameters on val, and
train trains them at full budget. A model with a non-finite metric is not valid, and
register refuses it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time

from components import modelcard, tracking
from components.evaluation import plots
from components.models import get_family
from components.params import dataset_name, family_name, train_config_from_dict
from components.training.checkpoint import load_exported
from components.training.storage import written_whole
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

CANDIDATES = ("train",)  # what register may register: the final model


def scalars(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def main() -> None:
    args = stage_args(__doc__)
    raw, layout = load(args)
    algo = args.algo
    fname = family_name(raw, algo)
    family = get_family(fname)
    shard_dir = layout.shards(dataset_name(raw, algo))
    with contextlib.ExitStack() as outputs:  # both folders appear whole at the end, or not at all
        plot_dir = outputs.enter_context(written_whole(layout.plots("eval", algo)))
        report_dir = outputs.enter_context(written_whole(layout.report(algo).parent))
        summary = evaluate(algo, fname, family, layout, shard_dir, plot_dir, report_dir / layout.report(algo).name)
        sweep = json.loads(layout.sweep(algo).read_text()) if layout.sweep(algo).exists() else {}
        trained = json.loads((layout.model(algo, "train") / "config.json").read_text())
        summary["sweep"] = modelcard.sweep_account(sweep, trained)
        with open(report_dir / layout.report(algo).name, "a") as report:
            report.write("\n" + modelcard.sweep_section(summary["sweep"], algo))
        tracking.configure(layout.root)
        client = tracking.MlflowClient()
        run = client.create_run(tracking.experiment_id(algo, layout.root), run_name="evaluate",
                                tags={"stage": "evaluate", "algo": algo, "selected": str(summary["selected"]),
                                      "git_commit": lineage.git_commit(layout.root)})
        now = int(time.time() * 1000)
        tracking.log_batch(client, run.info.run_id, metrics=[
            tracking.Metric(f"{n}_test_{k}", float(v), now, 0)
            for n in CANDIDATES for k, v in summary[n].items() if k != "valid"])
        client.log_artifacts(run.info.run_id, str(plot_dir))
        client.log_artifact(run.info.run_id, str(report_dir / layout.report(algo).name))
        client.set_terminated(run.info.run_id, "FINISHED")
    lineage.write_json(layout.metrics("eval", algo), summary)
    selected = summary["selected"]
    print(f"evaluate {algo}: selected {selected}; report {layout.report(algo).relative_to(layout.root)}")
    if selected is None:
        raise SystemExit(f"error: no valid {algo} candidate (non-finite metrics); nothing can be registered")


def evaluate(algo: str, fname: str, family, layout, shard_dir, plot_dir, report_path) -> dict:
    """Val metrics of both candidates, the selection, and their test metrics; writes the report."""
    # Val first, for both candidates: it alone selects. Then test, where the family may add its
    # costly extras (a diffusion model's sampler sweep) for the selected candidate only.
    models, val = {}, {}
    for name in CANDIDATES:
        state, meta = load_exported(layout.model(algo, name))
        cfg = train_config_from_dict(fname, meta["train"]).model
        model = family.build(cfg)
        model.load_state_dict(state)
        models[name] = (model, cfg)
        val[name] = scalars(family.evaluate(model, cfg, shard_dir, "val"))

    def rank(n: str) -> tuple:  # val only: the test split never chooses
        return tuple(val[n][m] * (1 if mode == "max" else -1) for m, mode in family.SELECT_BY)

    finite_val = [n for n in CANDIDATES if all(math.isfinite(v) for v in val[n].values())]
    preferred = max(finite_val, key=rank) if finite_val else None
    results, sections = {}, [f"# {algo}: evaluation\n"]
    for name in CANDIDATES:
        t0 = time.perf_counter()
        model, cfg = models[name]
        test_full = family.evaluate(model, cfg, shard_dir, "test", detail=name == preferred)
        test = scalars(test_full)
        finite = all(math.isfinite(v) for v in (*val[name].values(), *test.values()))
        results[name] = {**test, **{f"val_{k}": v for k, v in val[name].items()}, "valid": finite}
        report = family.report(test_full, f"{algo} ({name} candidate), test split", name,
                               str(layout.plots("eval", algo).relative_to(layout.root)))
        for file, figure in report.figures.items():
            plots.save(figure, plot_dir / file)
        sections.append(report.markdown)
        print(f"evaluate {algo}/{name}: test {family.PRIMARY_METRIC} {test[family.PRIMARY_METRIC]:.4f}, "
              f"val {family.PRIMARY_METRIC} {val[name][family.PRIMARY_METRIC]:.4f} ({time.perf_counter() - t0:.1f}s)",
              flush=True)

    valid = [n for n in CANDIDATES if results[n]["valid"]]
    selected = max(valid, key=rank) if valid else None
    summary = {"primary_metric": family.PRIMARY_METRIC, "mode": family.PRIMARY_MODE,
               "selected_by": [f"val_{m} ({mode})" for m, mode in family.SELECT_BY],
               "selected": selected, **results}
    sections.insert(1, f"Selected candidate: **{selected}** (on val: {', '.join(summary['selected_by'])})\n")
    report_path.write_text("\n".join(sections))
    return summary


if __name__ == "__main__":
    run_stage(main)
