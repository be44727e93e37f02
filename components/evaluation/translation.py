"""Translation metrics: exact match, BLEU and chrF (sacrebleu), for greedy and beam decoding.

BLEU (Papineni et al. 2002) is sacrebleu's corpus BLEU with its default 13a tokenisation
and ``effective_order``: n-gram orders that no reference has are left out of the geometric
mean, instead of zeroing it (German number words are 1-3 words long, so a plain 4-gram BLEU
is 0 for every system);
chrF (Popovic 2015) is the character n-gram F-score (beta 2), which credits a German
compound that is right in most of its parts. Exact match is the share of sentences whose
hypothesis equals the reference after whitespace normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    hyp, ref = list(hypotheses), list(references)
    return {"exact_match": float(np.mean([h == r for h, r in zip(hyp, ref)])) if ref else float("nan"),
            "bleu": float(sacrebleu.BLEU(effective_order=True).corpus_score(hyp, [ref]).score),
            "chrf": float(sacrebleu.corpus_chrf(hyp, [ref]).score)}


def sentence_chrf(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_chrf(hypothesis, [reference]).score)


def examples(sources: Sequence[str], references: Sequence[str], hypotheses: Sequence[str],
             k: int = 5) -> dict[str, list[dict]]:
    """The ``k`` best and ``k`` worst translations by sentence chrF (ties: shorter source first)."""
    rows = [{"source": s, "reference": r, "hypothesis": h, "chrf": sentence_chrf(h, r)}
            for s, r, h in zip(sources, references, hypotheses)]
    ranked = sorted(rows, key=lambda x: (-x["chrf"], len(x["source"]), x["source"]))
    return {"best": ranked[:k], "worst": ranked[::-1][:k]}


def evaluate(decoders: dict[str, Callable[[object], list[str]]], batches, strata_order: Sequence[str] = ()) -> dict:
    """Score each decoder (name -> function from a source-id batch to strings) over ``batches``
    of ``(src_ids, src_text, tgt_text)`` or ``(src_ids, src_text, tgt_text, stratum)``.

    Returns ``{metric: value}`` for the first decoder, ``{<name>_<metric>: value}`` for the
    others, ``num_samples``, ``examples`` of the first decoder, exact match by source length
    and, when the batches name each pair's stratum, ``exact_match_<stratum>`` of the first
    decoder and ``by_stratum`` (exact match and count per stratum, per decoder).
    """
    names = list(decoders)
    hyps: dict[str, list[str]] = {n: [] for n in names}
    sources: list[str] = []
    refs: list[str] = []
    lengths: list[int] = []
    strata: list[str] = []
    for src, src_text, tgt_text, *stratum in batches:
        for n in names:
            hyps[n].extend(decoders[n](src))
        sources.extend(src_text)
        refs.extend(tgt_text)
        lengths.extend((src != 0).sum(1).tolist())
        if stratum:
            strata.extend(stratum[0])
    out: dict = {"num_samples": len(refs)}
    for i, n in enumerate(names):
        prefix = "" if i == 0 else f"{n}_"
        out.update({f"{prefix}{k}": v for k, v in scores(hyps[n], refs).items()})
    out["examples"] = examples(sources, refs, hyps[names[0]])
    out["by_length"] = {n: by_length(hyps[n], refs, lengths) for n in names}
    if strata:
        out["by_stratum"] = {n: by_group(hyps[n], refs, strata, strata_order) for n in names}
        out.update({f"exact_match_{k}": v["exact_match"] for k, v in out["by_stratum"][names[0]].items()})
    return out


def by_group(hypotheses: Sequence[str], references: Sequence[str], groups: Sequence[str],
             order: Sequence[str] = ()) -> dict[str, dict]:
    """Exact match and count per group (a pair's stratum): the groups in ``order`` first, then the rest by name."""
    hits: dict[str, list[bool]] = {}
    for h, r, g in zip(hypotheses, references, groups):
        hits.setdefault(str(g), []).append(h == r)
    rank = {g: i for i, g in enumerate(order)}
    return {g: {"exact_match": float(np.mean(hits[g])), "count": len(hits[g])}
            for g in sorted(hits, key=lambda g: (rank.get(g, len(rank)), g))}


def by_length(hypotheses: Sequence[str], references: Sequence[str], lengths: Sequence[int]) -> dict[int, dict]:
    """Exact match and count per source length in tokens."""
    groups: dict[int, list[bool]] = {}
    for h, r, n in zip(hypotheses, references, lengths):
        groups.setdefault(int(n), []).append(h == r)
    return {n: {"exact_match": float(np.mean(v)), "count": len(v)} for n, v in sorted(groups.items())}


def exact_match_figure(result: dict, title: str, by: str = "by_length", xlabel: str = "source length (tokens)"):
    """Exact match by source length (or by ``by``: "by_stratum"), one bar per decoder."""
    from components.evaluation import plots

    per = result[by]
    first = next(iter(per.values()))
    groups = list(first)
    return plots.bars(groups, {name: [per[name][g]["exact_match"] for g in groups] for name in per},
                      [first[g]["count"] for g in groups], title, xlabel, "exact match")


def markdown(result: dict, title: str) -> str:
    """The metrics and the best/worst examples as a markdown section."""
    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in result.items() if isinstance(v, float)]
    if "by_stratum" in result:
        per = result["by_stratum"]
        names = list(per)
        lines += ["", "**Exact match by number structure** (each stratum drawn apart, none seen in training)", "",
                  "| stratum | pairs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        lines += [f"| {g} | {row['count']} | " + " | ".join(f"{per[n][g]['exact_match']:.4f}" for n in names) + " |"
                  for g, row in per[names[0]].items()]
    for which in ("best", "worst"):
        lines += ["", f"**{which.capitalize()} translations (sentence chrF)**", "",
                  "| source | reference | hypothesis | chrF |", "|---|---|---|---|"]
        lines += [f"| {r['source']} | {r['reference']} | {r['hypothesis']} | {r['chrf']:.1f} |"
                  for r in result["examples"][which]]
    return "\n".join(lines) + "\n"
