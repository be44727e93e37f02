"""Stage compare: the image generators of one dataset against each other, on the same held-out images.

Reads each generator's test-sample features (``reports/<algo>/sample_features.npy``, written by its
evaluate stage: the shared evaluator's standardised features of the samples its metrics scored)
and the held-out images' features (``data/shards/<dataset>/evaluator``). For every pair, KID(a)
minus KID(b) against the test images, paired on the same random halves of them, with its 95%
interval: a pair is called different only when the interval excludes zero. Writes
``metrics/compare/<dataset>.json`` and ``reports/compare/<dataset>/compare.md``; register puts
each generator's pairs on its model card, in the same words.
"""

from __future__ import annotations

import json

import numpy as np

from components.evaluation import generative, verdicts
from components.training.storage import written_whole
from pipelines import lineage
from pipelines.layout import load_compared, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, with_algo=False, with_dataset=True)
    algos, layout = load_compared(args)
    ev = generative.evaluator(str(layout.shards(args.dataset)))
    features = {}
    for algo in algos:
        summary = json.loads(layout.metrics("eval", algo).read_text())
        features[algo] = np.load(layout.report(algo).parent / f"sample_features_{summary['selected']}.npy")
    result = generative.compare(features, ev.ref["test_features"], ev.cfg.kid_draws, ev.cfg.seed)
    rows, words = [], []
    for pair in result["pairs"].values():
        a, b = pair["a"], pair["b"]
        sentence = verdicts.difference("KID", pair["difference"], pair["low"], pair["high"], True, a, b)
        words.append(f"- {sentence}")
        rows.append(f"| {a} | {b} | {result['kid'][a]:.4g} | {result['kid'][b]:.4g} | {pair['difference']:+.4g} "
                    f"[{pair['low']:+.3g}, {pair['high']:+.3g}] |")
    n = len(ev.ref["test_features"])
    markdown = (f"# {args.dataset}: the image generators compared\n\nKID of each generator's test samples against the "
                f"{n} test images, and each pair's difference, paired on the same {ev.cfg.kid_draws} random halves of "
                f"the test images (95% interval by half-sampling). A difference is one only where its interval "
                f"excludes zero.\n\n| a | b | KID a | KID b | a minus b [95%] |\n|---|---|---|---|---|\n"
                + "\n".join(rows) + "\n\n" + "\n".join(words) + "\n")
    with written_whole(layout.compare_report(args.dataset).parent) as folder:
        (folder / layout.compare_report(args.dataset).name).write_text(markdown)
    lineage.write_json(layout.metrics("compare", args.dataset), result)
    for line in words:
        print(f"compare {args.dataset}: {line[2:]}")


if __name__ == "__main__":
    run_stage(main)
