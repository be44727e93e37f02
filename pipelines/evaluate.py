"""Stage evaluate: test-split metrics of the train and tune candidates; picks one on val.

Reads ``models/<algo>/{train,tune}/`` and the dataset's val and test shards. Writes
``metrics/eval/<algo>.json`` (test metrics per candidate, the selected candidate, the
family's primary metric and direction) and ``plots/eval/<algo>/`` (confusion matrix
images and per-class accuracy tables per candidate). Selection uses val only; test is reported, never used to choose.
"""

from __future__ import annotations

import math
import shutil
import time

import numpy as np

from components import tracking
from components.config import train_config_from_dict
from components.data.shards import ShardDataset
from components.evaluation import plots
from components.evaluation.classification import classification_report
from components.models import get_family
from components.training.checkpoint import load_exported
from pipelines import lineage
from pipelines.layout import load, run_stage, stage_args

CANDIDATES = ("train", "tune")


def probabilities(family, model, cfg, shard_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
    for x, y in ShardDataset(shard_dir, split, batch_size=512):
        probs.append(family.predict(model, x.numpy(), cfg))
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def main() -> None:
    args = stage_args(__doc__)
    raw, layout = load(args)
    algo = args.algo
    family = get_family(algo)
    shard_dir = layout.shards(raw["algorithms"][algo]["dataset"])
    plot_dir = layout.plots("eval", algo)
    shutil.rmtree(plot_dir, ignore_errors=True)

    results = {}
    for name in CANDIDATES:
        state, meta = load_exported(layout.model(algo, name))
        cfg = train_config_from_dict(algo, meta["train"]).model
        model = family.build(cfg)
        model.load_state_dict(state)
        val = classification_report(*probabilities(family, model, cfg, shard_dir, "val"))
        test = classification_report(*probabilities(family, model, cfg, shard_dir, "test"))
        finite = all(math.isfinite(v) for v in (val["accuracy"], val["nll"], test["accuracy"], test["nll"]))
        results[name] = {**{k: test[k] for k in ("accuracy", "min_class_accuracy", "nll", "ece")},
                         "val_accuracy": val["accuracy"], "val_nll": val["nll"], "valid": finite}
        plots.save(plots.confusion(np.array(test["confusion_matrix"]),
                                   f"{algo} ({name}): test accuracy {test['accuracy']:.4f}"),
                   plot_dir / f"confusion_{name}.png")
        lineage.write_csv(plot_dir / f"per_class_{name}.csv",
                          [{"class": c, "accuracy": a} for c, a in test["per_class_accuracy"].items()])

    valid = [n for n in CANDIDATES if results[n]["valid"]]
    # Select on val (accuracy, then NLL); the test split only reports.
    selected = max(valid, key=lambda n: (results[n]["val_accuracy"], -results[n]["val_nll"])) if valid else None
    summary = {"primary_metric": family.PRIMARY_METRIC, "mode": family.PRIMARY_MODE,
               "selected": selected, **results}
    lineage.write_json(layout.metrics("eval", algo), summary)

    tracking.configure(layout.root)
    client = tracking.MlflowClient()
    run = client.create_run(tracking.experiment_id(algo, layout.root), run_name="evaluate",
                            tags={"stage": "evaluate", "algo": algo, "selected": str(selected),
                                  "git_commit": lineage.git_commit(layout.root)})
    now = int(time.time() * 1000)
    tracking.log_batch(client, run.info.run_id, metrics=[
        tracking.Metric(f"{n}_test_{k}", float(v), now, 0)
        for n, r in results.items() for k, v in r.items() if k != "valid"])
    client.log_artifacts(run.info.run_id, str(plot_dir))
    client.set_terminated(run.info.run_id, "FINISHED")
    for n, r in results.items():
        print(f"evaluate {algo}/{n}: test accuracy {r['accuracy']:.4f}, ece {r['ece']:.4f}, "
              f"val accuracy {r['val_accuracy']:.4f}{'  <- selected' if n == selected else ''}")
    if selected is None:
        raise SystemExit(f"error: no valid {algo} candidate (non-finite metrics); nothing can be registered")


if __name__ == "__main__":
    run_stage(main)
