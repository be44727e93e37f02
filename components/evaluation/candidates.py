"""The evaluate stage's work: score the candidates, select one on val, and report on test.

A candidate is an exported model (``checkpoint.export_latest``). Val alone selects (the test
split never chooses); test is scored for every candidate, with the family's costly extras (a
diffusion model's sampler sweep) for the preferred one only. A candidate with a non-finite
metric is not valid, and register refuses it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from components.params import train_config_from_dict
from components.training.checkpoint import load_exported


@dataclass
class Evaluation:
    """What the evaluate stage writes: the summary (``metrics/eval/<algo>.json``), the report's
    markdown and the families' figures by file name."""
    summary: dict[str, Any]
    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)  # file name -> numpy array, written beside the report


def scalars(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate(algo: str, family_name: str, family: ModuleType, candidates: dict[str, Path], shard_dir: Path,
             where: str) -> Evaluation:
    """Val metrics of every candidate, the selection, their test metrics and the report
    (figures named as ``where/<file>`` in its markdown)."""
    models, val = {}, {}
    for name, directory in candidates.items():
        state, meta = load_exported(directory)
        cfg = train_config_from_dict(family_name, meta["train"]).model
        model = family.build(cfg)
        model.load_state_dict(state)
        models[name] = (model, cfg)
        val[name] = scalars(family.evaluate(model, cfg, shard_dir, "val"))

    def rank(n: str) -> tuple:  # val only: the test split never chooses
        return tuple(val[n][m] * (1 if mode == "max" else -1) for m, mode in family.SELECT_BY)

    finite_val = [n for n in candidates if all(math.isfinite(v) for v in val[n].values())]
    preferred = max(finite_val, key=rank) if finite_val else None
    results, sections, figures, arrays = {}, [f"# {algo}: evaluation\n"], {}, {}
    for name in candidates:
        t0 = time.perf_counter()
        model, cfg = models[name]
        test_full = family.evaluate(model, cfg, shard_dir, "test", detail=name == preferred)
        test = scalars(test_full)
        finite = all(math.isfinite(v) for v in (*val[name].values(), *test.values()))
        results[name] = {**test, **{f"val_{k}": v for k, v in val[name].items()}, "valid": finite}
        report = family.report(test_full, f"{algo} ({name} candidate), test split", name, where)
        sections.append(report.markdown)
        figures.update(report.figures)
        if "sample_features" in test_full:  # what the compare stage scores the generators of a dataset on
            arrays[f"sample_features_{name}.npy"] = test_full["sample_features"]
        print(f"evaluate {algo}/{name}: test {family.PRIMARY_METRIC} {test[family.PRIMARY_METRIC]:.4f}, "
              f"val {family.PRIMARY_METRIC} {val[name][family.PRIMARY_METRIC]:.4f} ({time.perf_counter() - t0:.1f}s)",
              flush=True)

    valid = [n for n in candidates if results[n]["valid"]]
    selected = max(valid, key=rank) if valid else None
    summary = {"primary_metric": family.PRIMARY_METRIC, "mode": family.PRIMARY_MODE,
               "selected_by": [f"val_{m} ({mode})" for m, mode in family.SELECT_BY],
               "selected": selected, **results}
    sections.insert(1, f"Selected candidate: **{selected}** (on val: {', '.join(summary['selected_by'])})\n")
    return Evaluation(summary, "\n".join(sections), figures, arrays)
