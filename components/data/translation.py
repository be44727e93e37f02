"""Parallel text for translation: English number phrases -> German, or a user's TSV corpus.

``source: num2words`` (the embedded default) draws distinct integers and writes each as
English and German words with the num2words package: 342 -> "three hundred and forty-two"
-> "dreihundertzweiundvierzig". German compounds the whole number below a million into one
word and reorders tens and units ("zweiundvierzig" = two-and-forty), so this is translation,
not copying. The numbers are drawn by structure (``strata``, see :func:`structure`): small
numbers, round ones, ones with a run of zeros inside ("eighty-eight million and sixty-one"),
full-length ones and the rest, in the same shares in every split. Drawn by digit count
alone, round and zero-run numbers were a few percent of train and the model translated
them far worse than the typical number; each structure is a rendering rule (where English
says "and", German "eine Million") that is learnt only from examples of it. The numbers
are split disjointly: no test number is ever seen in training. Each pair's stratum is a
third column of the raw TSV and a ``stratum.txt`` field of the shards, and evaluation
reports exact match per stratum.

``source: tsv`` reads ``path``, one ``source<TAB>target`` pair per line (the format of
Tatoeba/ManyThings and most parallel-corpus exports). Pairs are deduplicated by
source and split by the seed, so the test split holds sources never seen in training.
Further columns are ignored.

Raw files are ``{train,val,test}.tsv`` under ``data/raw/translation``. Preprocess fits
the subword tokenizer (``tokenizer``: bpe or unigram) on the train split only, writes it as
``tokenizer.json`` (the ``tokenizers`` library's own format) beside the
shards, and drops pairs longer than ``max_len`` tokens (counted in stats.json).
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from components.config import ConfigError, bounds
from components.data.batching import TextBatcher
from components.data.manifest import DataError, sha256, write_manifest
from components.data.shards import BatchOptions
from components.data.splits import SPLITS
from components.data.tokenizer import Tokenizer, normalize
from components.data.writer import SplitWriter, write_stats

TOKENIZER = "tokenizer.json"
STRATA = ("small", "round", "inner_zero", "full", "other")
ENCODE_CHUNK = 20_000  # pairs encoded at a time (the tokenizer's threads share a chunk)


@dataclass
class Config:
    """``data.translation``."""
    source: Literal["num2words", "tsv"] = "num2words"
    path: str = ""  # the TSV corpus, when source is tsv (relative to the repository root or absolute)
    src_lang: str = "en"  # num2words language codes
    tgt_lang: str = "de"
    max_digits: int = field(default=9, metadata=bounds(ge=1, le=15))
    # num2words: each split's share of numbers of each structure (see ``structure``); a structure
    # that max_digits rules out is left out and the others' shares scaled up.
    strata: dict[str, float] = field(default_factory=lambda: {
        "small": 0.03, "round": 0.12, "inner_zero": 0.2, "full": 0.25, "other": 0.4})
    num_train: int = field(default=18000, metadata=bounds(ge=0))  # tsv: 0 = every pair not in val/test
    num_val: int = field(default=1000, metadata=bounds(ge=1))
    num_test: int = field(default=2000, metadata=bounds(ge=1))
    seed: int = 0
    vocab_size: int = field(default=300, metadata=bounds(ge=8))
    tokenizer: Literal["bpe", "unigram"] = "bpe"  # the subword model, fitted on train (components/data/tokenizer.py)
    max_len: int = field(default=48, metadata=bounds(ge=2))  # tokens per side; longer pairs are dropped
    samples_per_shard: int = field(default=500, metadata=bounds(ge=1))  # val and test need a shard per DDP worker

    def validate(self) -> None:
        if self.source == "tsv" and not self.path:
            raise ConfigError("path: source tsv needs the corpus file; set data.translation.path")
        if self.source == "num2words" and self.num_train == 0:
            raise ConfigError("num_train: must be > 0 for generated data")
        if self.source == "num2words":
            unknown = sorted(set(self.strata) - set(STRATA))
            if unknown or not self.strata or any(not w >= 0 for w in self.strata.values()) \
                    or sum(self.strata.values()) <= 0:
                raise ConfigError(f"strata: shares of number structures, keys from {list(STRATA)}, values >= 0 "
                                  f"and not all 0; got {self.strata}")
            available = 10 ** self.max_digits
            if self.num_train + self.num_val + self.num_test > available // 2:
                raise ConfigError(f"max_digits: {self.max_digits} digits give {available} numbers, too few for "
                                  f"{self.num_train + self.num_val + self.num_test} distinct ones; raise max_digits")


# ---------------------------------------------------------------------------- sources

def structure(n: int, max_digits: int) -> str:
    """The stratum of ``n``: ``small`` (below 1000), ``round`` (a multiple of 1000), ``inner_zero``
    (two or more zero digits in a row between the first and the last: a group or its tens and
    units are left out, as in 88,000,061 or 88,300,061), ``full`` (``max_digits`` digits, none of
    those) or ``other``."""
    digits = str(n)
    if n < 1000:
        return "small"
    if n % 1000 == 0:
        return "round"
    if "00" in digits[1:-1]:
        return "inner_zero"
    return "full" if len(digits) == max_digits else "other"


def pool_sizes(max_digits: int) -> dict[str, float]:
    """How many numbers of each stratum exist below ``10 ** max_digits`` (counted up to 6 digits;
    beyond, only ``small`` and ``round`` are few enough to matter)."""
    if max_digits <= 6:
        return dict(Counter(structure(n, max_digits) for n in range(10 ** max_digits)))
    return {"small": 1000, "round": 10 ** (max_digits - 3) - 1, "inner_zero": math.inf, "full": math.inf,
            "other": math.inf}


def stratum_shares(strata: dict[str, float], max_digits: int, total: int = 0) -> dict[str, float]:
    """The shares of the strata that exist below ``10 ** max_digits``, scaled to sum to 1, in
    ``STRATA`` order. With ``total`` numbers to draw, a stratum is held to 80% of its pool (a few
    round numbers exist below 10,000) and the rest of its share goes to the others."""
    pools = pool_sizes(max_digits)
    shares = {k: strata.get(k, 0.0) for k in STRATA if pools.get(k, 0) > 0 and strata.get(k, 0.0) > 0}
    if not shares:
        raise ConfigError(f"strata: none of {sorted(k for k, w in strata.items() if w > 0)} exists below "
                          f"10^{max_digits}; give a share to one of {sorted(pools)}")
    capped: dict[str, float] = {}
    while True:
        free = {k: w for k, w in shares.items() if k not in capped}
        left = 1.0 - sum(capped.values())
        scale = left / sum(free.values()) if free else 0.0
        over = {k: 0.8 * pools[k] / total for k, w in free.items() if total and w * scale * total > 0.8 * pools[k]}
        if not over or len(over) == len(free):
            return {k: capped.get(k, shares[k] * scale) for k in shares}
        capped.update(over)


def apportion(n: int, shares: dict[str, float]) -> dict[str, int]:
    """``n`` split by ``shares`` into integers that sum to ``n`` (largest remainder)."""
    exact = {k: n * w for k, w in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _propose(stratum: str, max_digits: int, rng: np.random.Generator) -> int:
    """A number likely of ``stratum`` (the caller keeps it only if :func:`structure` agrees)."""
    if stratum == "small":
        d = int(rng.integers(1, min(3, max_digits) + 1))
    elif stratum == "full":
        d = max_digits
    else:
        d = int(rng.integers(4, (max_digits if stratum == "other" else max_digits + 1)))
    n = int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10 ** d))
    if stratum == "round":
        zeros = 1000 ** int(rng.integers(1, (d - 1) // 3 + 1))  # one or more trailing zero groups
        n = max(n // zeros, 1) * zeros
    elif stratum == "inner_zero":
        run = int(rng.integers(2, d - 1))  # zeros in a row, strictly inside
        start = int(rng.integers(1, d - run))
        digits = list(str(n))
        digits[start:start + run] = "0" * run
        n = int("".join(digits))
    return n


def draw_numbers(counts: dict[str, int], max_digits: int, seed: int) -> dict[str, list[int]]:
    """``counts[stratum]`` distinct integers of each stratum (none in two strata), in draw order."""
    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    out: dict[str, list[int]] = {}
    for stratum, count in counts.items():
        out[stratum], tries = [], 0
        while len(out[stratum]) < count:
            tries += 1
            if tries > 100 * count + 1000:
                raise ConfigError(f"strata.{stratum}: could not draw {count} distinct numbers of this structure "
                                  f"with max_digits {max_digits}; lower its share or raise max_digits")
            n = _propose(stratum, max_digits, rng)
            if n not in seen and structure(n, max_digits) == stratum:
                seen.add(n)
                out[stratum].append(n)
    return out


def draw_splits(cfg: Config) -> dict[str, list[tuple[int, str]]]:
    """Each split's (number, stratum) list: every split holds the strata in the same shares
    (``apportion``), the numbers of a stratum are drawn once, shuffled and dealt test, val, then
    train, so no number is in two splits (0 always in train); each split is shuffled by the seed."""
    sizes = {"test": cfg.num_test, "val": cfg.num_val, "train": cfg.num_train}
    shares = stratum_shares(cfg.strata, cfg.max_digits, sum(sizes.values()))
    per_split = {k: apportion(n, shares) for k, n in sizes.items()}
    numbers = draw_numbers({s: sum(per_split[k][s] for k in sizes) for s in shares}, cfg.max_digits, cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    for s, drawn in numbers.items():
        # Dealt in random order: the draw finds the few 1- and 2-digit numbers first. Zero goes to
        # train: its words ("zero", "null") are in no other number, so unseen it cannot be translated.
        drawn = [drawn[i] for i in rng.permutation(len(drawn))]
        numbers[s] = [n for n in drawn if n != 0] + [n for n in drawn if n == 0]
    out: dict[str, list[tuple[int, str]]] = {}
    taken = dict.fromkeys(shares, 0)
    for split in sizes:
        items = []
        for s in shares:
            items += [(n, s) for n in numbers[s][taken[s]:taken[s] + per_split[split][s]]]
            taken[s] += per_split[split][s]
        out[split] = [items[i] for i in rng.permutation(len(items))]
    return out


def number_pairs(numbers: np.ndarray, src_lang: str, tgt_lang: str) -> list[tuple[str, str]]:
    from num2words import num2words

    try:
        return [(num2words(int(x), lang=src_lang), num2words(int(x), lang=tgt_lang)) for x in numbers]
    except NotImplementedError as exc:
        raise ConfigError(f"src_lang/tgt_lang: num2words does not support it ({exc})") from None


def iter_parallel_tsv(path: Path) -> Iterator[tuple[str, str, str]]:
    """``(source, target, third column)`` of each ``source<TAB>target`` line, as the file streams;
    extra columns (licence, ids) after the second are ignored but the third ("" if none).

    A line without a tab or with an empty side raises DataError naming the file and line.
    """
    if not path.exists():
        raise DataError(f"{path}: corpus not found; set data.translation.path to a source<TAB>target file")
    empty = True
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
                raise DataError(f"{path}:{i}: expected 'source<TAB>target', got {line[:80]!r}; "
                                f"fix or remove the line")
            empty = False
            yield normalize(cols[0]), normalize(cols[1]), cols[2].strip() if len(cols) > 2 else ""
    if empty:
        raise DataError(f"{path}: no sentence pairs; expected source<TAB>target lines")


def read_parallel_tsv(path: Path, third: list[str] | None = None) -> list[tuple[str, str]]:
    """Every pair of :func:`iter_parallel_tsv`; each line's third column is appended to ``third``
    when it is given."""
    pairs = []
    for src, tgt, extra in iter_parallel_tsv(path):
        pairs.append((src, tgt))
        if third is not None:
            third.append(extra)
    return pairs


class _SideTexts:
    """Both sides of a TSV's pairs, read from the file each time it is iterated (a tokenizer's fit)."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[str]:
        for src, tgt, _ in iter_parallel_tsv(self.path):
            yield src
            yield tgt


def _chunks(path: Path) -> Iterator[list[tuple[str, str, str]]]:
    """A TSV's rows, ENCODE_CHUNK at a time."""
    rows = iter_parallel_tsv(path)
    while chunk := list(itertools.islice(rows, ENCODE_CHUNK)):
        yield chunk


def split_corpus(pairs: list[tuple[str, str]], cfg: Config) -> dict[str, list[tuple[str, str]]]:
    """Dedupe by source, shuffle by seed, then test, val and train (sources never shared)."""
    unique = list(dict(pairs).items())  # the last target of a repeated source wins
    order = np.random.default_rng(cfg.seed).permutation(len(unique))
    if cfg.num_val + cfg.num_test >= len(unique):
        raise DataError(f"{cfg.path}: {len(unique)} distinct sources, not enough for num_val {cfg.num_val} + "
                        f"num_test {cfg.num_test} and a train split; lower them")
    items = [unique[i] for i in order]
    test, val = items[:cfg.num_test], items[cfg.num_test:cfg.num_test + cfg.num_val]
    train = items[cfg.num_test + cfg.num_val:]
    return {"train": train[:cfg.num_train] if cfg.num_train else train, "val": val, "test": test}


def write_tsv(path: Path, rows: list[tuple[str, ...]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines("\t".join(row) + "\n" for row in rows)


# ---------------------------------------------------------------------------- stages

def ingest(cfg: Config, out_dir: Path) -> dict:
    """Write ``{train,val,test}.tsv`` and a checksum manifest to ``out_dir``.

    A relative ``path`` is read from the working directory (the repository root under DVC).
    """
    if cfg.source == "num2words":
        drawn = draw_splits(cfg)
        split = {k: [(*pair, stratum) for pair, (_, stratum) in
                     zip(number_pairs([n for n, _ in v], cfg.src_lang, cfg.tgt_lang), v)] for k, v in drawn.items()}
        shares = stratum_shares(cfg.strata, cfg.max_digits, cfg.num_train + cfg.num_val + cfg.num_test)
        origin = {"source": f"num2words {cfg.src_lang}->{cfg.tgt_lang}, 0..{cfg.max_digits} digits, by structure "
                            + ", ".join(f"{k} {w:.0%}" for k, w in shares.items()),
                  "strata": {k: dict(Counter(s for _, s in v)) for k, v in drawn.items()}}
    else:
        path = Path(cfg.path)
        split = split_corpus(read_parallel_tsv(path), cfg)
        origin = {"source": str(path), "source_sha256": sha256(path)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, pairs in split.items():
        write_tsv(out_dir / f"{name}.tsv", pairs)
    return write_manifest(out_dir, {
        "dataset": "translation", **origin, "num_samples": sum(len(v) for v in split.values()),
        "split_sizes": {k: len(v) for k, v in split.items()}})


def read_split(raw_dir: Path, split: str, strata: list[str] | None = None) -> list[tuple[str, str]]:
    """The split's pairs; each pair's stratum (the raw TSV's third column, "" where none) is
    appended to ``strata`` when it is given."""
    return read_parallel_tsv(raw_dir / f"{split}.tsv", strata)


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Fit the tokenizer on train, encode every split, write shards + tokenizer.json.

    The TSVs stream, ENCODE_CHUNK pairs at a time: the tokenizer's fit reads train twice (its
    alphabet, then the trainer's word counts); each split is encoded once into a flat file of
    ids beside the output, which counts the pairs that fit ``max_len`` (the shard writer deals
    samples to shards by that count), and then written to shards from the TSV and that file.
    Memory holds a chunk of pairs and two lengths per pair, never the corpus. Every shard
    records its tokens (source + target) in stats.json, for token-budget batches.
    """
    paths = {k: raw_dir / f"{k}.tsv" for k in SPLITS}
    tok = Tokenizer.fit(_SideTexts(paths["train"]), cfg.vocab_size, model=cfg.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir / TOKENIZER)
    dtype = np.dtype(np.int16 if len(tok) < 2 ** 15 else np.int32)
    stratified, split_meta, longest, splits = True, {}, 0, {}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        lengths = {}
        for name, path in paths.items():
            src_len, tgt_len, marked = [], [], False
            with open(Path(tmp) / name, "wb") as ids:
                for chunk in _chunks(path):
                    src = tok.encode_batch([row[0] for row in chunk])
                    tgt = tok.encode_batch([row[1] for row in chunk])
                    src_len += map(len, src)
                    tgt_len += map(len, tgt)
                    marked = marked or any(row[2] for row in chunk)
                    ids.writelines(np.fromiter(itertools.chain.from_iterable(side), dtype).tobytes() for side in (src, tgt))
            src, tgt = np.asarray(src_len), np.asarray(tgt_len)
            keep = (src > 0) & (src <= cfg.max_len) & (tgt > 0) & (tgt < cfg.max_len)
            if not keep.any():
                raise DataError(f"{path}: every pair is longer than max_len {cfg.max_len} tokens; "
                                f"raise data.translation.max_len")
            lengths[name], stratified = (src, tgt, keep), stratified and marked
            longest = max(longest, int(src[keep].max()), int(tgt[keep].max()))
            split_meta[name] = {"dropped_too_long": int((~keep).sum()), "src_tokens_mean": float(src[keep].mean()),
                                "tgt_tokens_mean": float(tgt[keep].mean())}
        for name, path in paths.items():
            src_len, tgt_len, keep = lengths[name]
            writer = SplitWriter(out_dir, name, int(keep.sum()), cfg.samples_per_shard, compress=True,
                                      compresslevel=6)  # 4x faster than 9, shards 7% larger
            with open(Path(tmp) / name, "rb") as ids:
                start = 0
                for chunk in _chunks(path):
                    stop = start + len(chunk)
                    sides = [np.split(np.fromfile(ids, dtype, int(n[start:stop].sum())), np.cumsum(n[start:stop])[:-1])
                             for n in (src_len, tgt_len)]
                    for (src_text, tgt_text, stratum), src, tgt, kept in zip(chunk, *sides, keep[start:stop]):
                        if not kept:
                            continue
                        sample = {"__key__": f"{name}{len(writer):07d}", "src.npy": src, "tgt.npy": tgt,
                                  "src.txt": src_text, "tgt.txt": tgt_text}
                        if stratified:
                            sample["stratum.txt"] = stratum or "none"
                        writer.write(sample, tokens=len(src) + len(tgt))
                    start = stop
            splits[name] = writer.close()
    return write_stats(out_dir, splits, fields=("src.npy", "tgt.npy"), split_meta=split_meta, meta={
        "dataset": "translation", "source": manifest.get("source", ""),
        "vocab_size": len(tok), "max_len": longest, "assets": {"tokenizer": TOKENIZER},
        "stratified": stratified,
        "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}})


def batcher(stats: dict, shard_dir: Path, options: BatchOptions) -> TextBatcher:
    """How the reader batches these shards: token ids padded, or bucketed by length (``batch_tokens``)."""
    return TextBatcher()
