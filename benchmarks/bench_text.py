"""Text at real size: a million sentence pairs through the translation stages.

Writes, under a temporary folder (or ``--keep DIR``), a synthetic parallel corpus as a TSV:

- 10% number phrases from num2words (English -> German, 0 .. 999,999,999);
- 90% random sentences: Zipf-distributed words (exponent 1.1) from 40,000 invented word types,
  lengths log-normal (median 18 words, a long tail past 60), and a "translation" that maps
  each word through a fixed dictionary, drops or inserts a word now and then and swaps
  neighbours, so target lengths follow source lengths loosely, as in real parallel text.

Then it runs the real ``ingest`` and ``preprocess`` stages on it (their command lines, with the
project's params.yaml except ``data.translation``: this TSV, a 32,000-piece joint BPE as in
Vaswani et al. 2017, ``max_len`` 128), each in its own process, and prints:

1. wall time and peak RSS of each stage;
2. shard bytes per pair, beside the TSV's bytes per pair;
3. reader throughput in tokens/s (one epoch of the train split, streamed from disk, token-budget
   batches of ``--batch-tokens``) with 0 and 2 loader workers;
4. the fraction of padding in ``batch_size`` batches (``--batch-size`` pairs, the sentence count
   that holds ``--batch-tokens`` tokens on average) against ``batch_tokens`` batches.

    python benchmarks/bench_text.py [--pairs 1000000] [--vocab 32000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.data.batching import padding  # noqa: E402
from components.data.registry import open_split  # noqa: E402
from components.data.shards import read_stats  # noqa: E402

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def invented_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct lowercase words of 2 to 12 letters (shorter ones likelier)."""
    words: set[str] = set()
    while len(words) < n:
        for length in np.clip(rng.geometric(0.18, n), 2, 12):
            words.add("".join(LETTERS[rng.integers(0, 26, length)]))
    return sorted(words)[:n]


def random_pairs(n: int, seed: int, types: int = 40_000) -> list[str]:
    """``n`` TSV lines of random sentences and their dictionary "translations"."""
    rng = np.random.default_rng(seed)
    source, target = invented_words(types, rng), invented_words(types, rng)
    rng.shuffle(target)
    p = 1.0 / np.arange(1, types + 1) ** 1.1
    lengths = np.clip(np.round(rng.lognormal(np.log(18), 0.55, n)), 1, 90).astype(int)
    ids = rng.choice(types, size=int(lengths.sum()), p=p / p.sum())
    lines, start = [], 0
    for length in lengths.tolist():
        words = ids[start:start + length].tolist()
        start += length
        out = [w for w in words if rng.random() > 0.08] or words[:1]
        if rng.random() < 0.3:
            out.insert(int(rng.integers(0, len(out) + 1)), int(rng.integers(0, 200)))  # a common word
        if len(out) > 1 and rng.random() < 0.5:
            i = int(rng.integers(0, len(out) - 1))
            out[i], out[i + 1] = out[i + 1], out[i]
        lines.append(" ".join(source[w] for w in words) + "\t" + " ".join(target[w] for w in out))
    return lines


def number_pairs(n: int, seed: int) -> list[str]:
    from num2words import num2words

    numbers = np.random.default_rng(seed).integers(0, 10 ** 9, n)
    return [f"{num2words(int(x), lang='en')}\t{num2words(int(x), lang='de')}" for x in numbers]


def write_corpus(path: Path, pairs: int, seed: int) -> None:
    numbers = pairs // 10
    lines = number_pairs(numbers, seed) + random_pairs(pairs - numbers, seed + 1)
    order = np.random.default_rng(seed + 2).permutation(len(lines))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[i] + "\n" for i in order)


def run_stage(stage: str, params: Path, cwd: Path) -> tuple[float, float]:
    """Run ``python -m pipelines.<stage> --dataset translation``; its wall seconds and peak RSS in GB."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", f"pipelines.{stage}", "--dataset", "translation",
                             "--params", str(params)], cwd=cwd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{stage} failed (exit {proc.returncode})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1e6  # Linux: ru_maxrss in KiB -> GB (10^6 KiB)


def read_epoch(shards: Path, workers: int, **batching) -> dict:
    """One epoch of the train split: seconds, real tokens, padded cells, batches."""
    ds = open_split(shards, "train", shuffle=True, seed=0, **batching)
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    t0, tokens, cells, batches = time.perf_counter(), 0, 0, 0
    for batch in loader:
        real, padded = padding(batch)
        tokens, cells, batches = tokens + real, cells + padded, batches + 1
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "cells": cells, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--batch-tokens", type=int, default=25_000, help="source + target tokens per batch")
    parser.add_argument("--keep", type=Path, help="work here and keep the files (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.tsv"
        t0 = time.perf_counter()
        write_corpus(corpus, args.pairs, args.seed)
        print(f"corpus: {args.pairs:,} pairs, {corpus.stat().st_size / 1e6:.0f} MB, written in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

        params = yaml.safe_load((REPO / "params.yaml").read_text())
        held_out = max(1000, args.pairs // 200)
        params["data"]["translation"] = {
            "source": "tsv", "path": str(corpus), "num_train": 0, "num_val": held_out, "num_test": held_out,
            "seed": args.seed, "vocab_size": args.vocab, "max_len": 128, "samples_per_shard": 10_000}
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

        print("| stage | wall s | peak RSS GB |\n|---|---|---|")
        for stage in ("ingest", "preprocess"):
            wall, rss = run_stage(stage, work / "params.yaml", work)
            print(f"| {stage} | {wall:.1f} | {rss:.2f} |", flush=True)

        shards = work / "data" / "shards" / "translation"
        stats = read_stats(shards)
        samples = sum(s["samples"] for s in stats["splits"].values())
        shard_bytes = sum(e["bytes"] for s in stats["splits"].values() for e in s["shards"])
        train = stats["splits"]["train"]
        tokens_per_pair = sum(e["tokens"] for e in train["shards"]) / train["samples"]
        print(f"\nshards: {samples:,} pairs ({sum(s['dropped_too_long'] for s in stats['splits'].values())} "
              f"longer than max_len dropped) in {sum(len(s['shards']) for s in stats['splits'].values())} shards, "
              f"{shard_bytes / samples:.0f} bytes per pair (the TSV: {corpus.stat().st_size / args.pairs:.0f}); "
              f"vocabulary {stats['vocab_size']:,}, {tokens_per_pair:.1f} source + target tokens per pair")

        batch_size = max(1, round(args.batch_tokens / tokens_per_pair))
        print(f"\n| reader (train, {train['samples']:,} pairs) | loader workers | tokens/s | padding |\n|---|---|---|---|")
        rows = []
        for workers in (0, 2):
            for name, option in ((f"batch_tokens {args.batch_tokens}", {"batch_tokens": args.batch_tokens}),
                                 (f"batch_size {batch_size}", {"batch_size": batch_size})):
                got = read_epoch(shards, workers, **option)
                pad = 1 - got["tokens"] / got["cells"]
                rows.append({"batching": name, "workers": workers, **got, "padding": pad})
                print(f"| {name} ({got['batches']} batches) | {workers} | {got['tokens'] / got['seconds']:,.0f} | "
                      f"{pad:.1%} |", flush=True)
        (work / "bench_text.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
