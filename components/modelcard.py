"""The model card: a registered version's description in MLflow (rendered as markdown on the
version page) and ``card/README.md`` of its artifacts: what trained it, on which data and code,
what the sweep chose, its test metrics with their floors and ceilings, and how to load it. And
the evaluation report's account of the sweep (:func:`sweep_account`, :func:`sweep_section`)."""

from __future__ import annotations

import json
from typing import Any

from components.evaluation import verdicts


def metric_rows(test: dict, primary: str) -> list[str]:
    """Markdown rows: each test metric (with its 95% interval where measured) with its floor (the
    data scored as a model) and ceiling where the family's evaluator measures them; the primary
    metric first and in bold."""
    bounds = {"_floor", "_floor_std", "_ceiling", "_std", "_se", "_low", "_high"}
    names = [k for k in test if isinstance(test[k], (int, float)) and not any(k.endswith(b) for b in bounds)]
    names.sort(key=lambda k: (k != primary, k))
    rows = ["| metric | test | floor | ceiling |", "|---|---|---|---|"]
    for k in names:
        floor = f"{test[k + '_floor']:.4g}" if f"{k}_floor" in test else ""
        if floor and f"{k}_floor_std" in test:
            floor += f" ± {test[k + '_floor_std']:.2g}"
        ceiling = f"{test[k + '_ceiling']:.4g}" if f"{k}_ceiling" in test else ""
        name = f"**{k}**" if k == primary else k
        interval = f" [{test[k + '_low']:.3g}, {test[k + '_high']:.3g}]" if f"{k}_low" in test else ""
        rows.append(f"| {name} | {float(test[k]):.4g}{interval} | {floor} | {ceiling} |")
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
    return [(f"| Hyperparameters | the sweep's winner {w['trial']} of {sweep['trials']} trials{run}: "
            f"{w['schedule']['name']}, peak lr {w['lr']:.4g}, warm-up {w['schedule']['warmup']} |"),
            (f"| What the sweep bought | {m} on val after {same['epochs']} epochs: {same['winner']:.4f} against "
            f"{same['baseline']:.4f} for params.yaml's own {sweep['baseline']['schedule']['name']}, "
            f"lr {sweep['baseline']['lr']:.4g} |")]


def model_card(family: Any, algo: str, version_meta: dict, test: dict, primary: str, mode: str, *,
               data_version: str, dvc_md5: str, commit: str, images: list[str], selected_by: list[str],
               usage: str, data: dict | None = None, sweep: dict | None = None,
               compared: dict | None = None) -> str:
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
        (f"| Key params | {', '.join(f'{k} {v}' for k, v in keys.items())}; optimizer {train['optimizer']['name']}, "
        f"schedule {train['schedule']['name']} (warm-up {train['schedule'].get('warmup', 0)}) |"),
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
        *[f"{sentence}\n" for sentence in verdicts.sample_quality(test)],
        *(["Against the dataset's other generators (KID on the same held-out images, paired; the compare "
           "stage's report):\n"] if compared else []),
        *[f"- {verdicts.difference('KID', c['difference'], c['low'], c['high'], True, c['a'], c['b'])}"
          for c in (compared or {}).values()],
        *([""] if compared else []),
        "## Load",
        usage,
        "",
        "## Aliases",
        (f"`champion`: the best version of {algo} so far on test {primary}; `challenger`: the newest "
        f"version that did not beat it. Load either with `models:/{algo}@<alias>`."),
    ]
    if images:
        lines += ["", "## Images", "Artifacts of this version's run, under `card/`: "
                  + ", ".join(f"`{name}`" for name in images) + ", and the evaluation report `card/evaluate.md`."]
    return "\n".join(lines)


def sweep_account(sweep: dict, meta: dict) -> dict:
    """The sweep's winner against params.yaml's own config (``sweep``: its ``sweep.json``), and
    whether the trained model used the winner (``meta``: its exported ``config.json`` says)."""
    if not sweep:
        return {"tuned": False}
    win, train = sweep["winner"], meta["train"]
    used = (train["lr"] == win["lr"] and train["schedule"]["name"] == win["schedule"]["name"]
            and train["schedule"]["warmup"] == win["schedule"]["warmup"])
    return {"tuned": used, "metric": sweep["metric"], "trials": sweep["trials"], "winner": win,
            "baseline": sweep["baseline"], "same_budget": sweep["same_budget"], "epochs_spent": sweep["epochs_spent"],
            "tune_run_id": meta.get("tune_run_id", "")}


def sweep_section(s: dict, algo: str) -> str:
    """The report's account of the sweep: what was trained, and what it bought on val."""
    if "winner" not in s:
        return "## Hyperparameters\nNo sweep ran: trained with params.yaml's own schedule.\n"
    w, b, same, m = s["winner"], s["baseline"], s["same_budget"], s["metric"]
    trained = (f"the sweep's winner {w['trial']}: {w['schedule']['name']} schedule, peak lr {w['lr']:.4g}, "
               f"warm-up {w['schedule']['warmup']}" if s["tuned"] else
               f"params.yaml's own schedule (train.{algo}.tuned: false; the sweep's winner was {w['trial']})")
    return "\n".join([
        "## Hyperparameters: what the sweep bought",
        f"Trained with {trained}.",
        "",
        f"| on val, {same['epochs']} epochs of the sweep | {m} |", "|---|---|",
        (f"| params.yaml's own ({b['schedule']['name']}, lr {b['lr']:.4g}, warm-up {b['schedule']['warmup']}) "
         f"| {same['baseline']:.4f} |"),
        (f"| the winner ({w['schedule']['name']}, lr {w['lr']:.4g}, warm-up {w['schedule']['warmup']}) "
         f"| {same['winner']:.4f} |"),
        "",
        (f"{s['trials']} trials by successive halving, {s['epochs_spent']} epochs in all; the winner reached "
         f"{w[m]:.4f} at {w['epochs']} epochs. Both rows are at the last rung params.yaml's own config reached"
         + (" (the final one: cut earlier, it went on as the sweep's control)." if b.get("status") == "control"
            else ".")),
        ""])
