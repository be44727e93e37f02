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
import time

import numpy as np

from components import modelcard, tracking
from components.evaluation import candidates, plots
from components.models import get_family
from components.training.storage import written_whole
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

CANDIDATES = ("train",)  # what register may register: the final model


def main() -> None:
    args = stage_args(__doc__)
    p, layout = load(args, "evaluate")
    algo = p.name
    family = get_family(p.family)
    report_path = layout.report(algo)
    result = candidates.evaluate(algo, p.family, family, {n: layout.model(algo, n) for n in CANDIDATES},
                                 layout.shards(p.dataset), str(layout.plots("eval", algo).relative_to(layout.root)))
    summary = result.summary
    sweep = json.loads(layout.sweep(algo).read_text()) if layout.sweep(algo).exists() else {}
    trained = json.loads((layout.model(algo, "train") / "config.json").read_text())
    summary["sweep"] = modelcard.sweep_account(sweep, trained)
    with contextlib.ExitStack() as outputs:  # both folders appear whole at the end, or not at all
        plot_dir = outputs.enter_context(written_whole(layout.plots("eval", algo)))
        report_dir = outputs.enter_context(written_whole(report_path.parent))
        for file, figure in result.figures.items():
            plots.save(figure, plot_dir / file)
        for file, array in result.arrays.items():
            np.save(report_dir / file, array)
        (report_dir / report_path.name).write_text(result.markdown + "\n" + modelcard.sweep_section(summary["sweep"], algo))
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
        client.log_artifact(run.info.run_id, str(report_dir / report_path.name))
        client.set_terminated(run.info.run_id, "FINISHED")
    lineage.write_json(layout.metrics("eval", algo), summary)
    selected = summary["selected"]
    print(f"evaluate {algo}: selected {selected}; report {report_path.relative_to(layout.root)}")
    if selected is None:
        raise SystemExit(f"error: no valid {algo} candidate (non-finite metrics); nothing can be registered")


if __name__ == "__main__":
    run_stage(main)
