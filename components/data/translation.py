"""Parallel text for translation: English number phrases -> German, or a user's TSV corpus.

``source: num2words`` (the embedded default) draws distinct integers with a uniformly
chosen number of digits (1..``max_digits``), so small and large numbers are equally
represented, and writes each as English and German words with the num2words package:
342 -> "three hundred and forty-two" -> "dreihundertzweiundvierzig". German compounds
the whole number below a million into one word and reorders tens and units
("zweiundvierzig" = two-and-forty), so this is translation, not copying. The numbers
are split disjointly: no test number is ever seen in training.

``source: tsv`` reads ``path``, one ``source<TAB>target`` pair per line (the format of
Tatoeba/ManyThings and most parallel-corpus exports). Pairs are deduplicated by
source and split by the seed, so the test split holds sources never seen in training.

Raw files are ``{train,val,test}.tsv`` under ``data/raw/translation``. Preprocess fits
the BPE tokenizer on the train split only, writes it as ``tokenizer.json`` beside the
shards, and drops pairs longer than ``max_len`` tokens (counted in stats.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from components.config import ConfigError, bounds
from components.data.manifest import DataError, sha256, write_manifest
from components.data.shards import write_shards
from components.data.tokenizer import Tokenizer, normalize

SPLITS = ("train", "val", "test")
TOKENIZER = "tokenizer.json"


@dataclass
class Config:
    """``data.translation``."""
    source: Literal["num2words", "tsv"] = "num2words"
    path: str = ""  # the TSV corpus, when source is tsv (relative to the repository root or absolute)
    src_lang: str = "en"  # num2words language codes
    tgt_lang: str = "de"
    max_digits: int = field(default=9, metadata=bounds(ge=1, le=15))
    num_train: int = field(default=18000, metadata=bounds(ge=0))  # tsv: 0 = every pair not in val/test
    num_val: int = field(default=1000, metadata=bounds(ge=1))
    num_test: int = field(default=2000, metadata=bounds(ge=1))
    seed: int = 0
    vocab_size: int = field(default=300, metadata=bounds(ge=8))
    max_len: int = field(default=48, metadata=bounds(ge=2))  # tokens per side; longer pairs are dropped
    samples_per_shard: int = field(default=500, metadata=bounds(ge=1))  # val and test need a shard per DDP worker

    def validate(self) -> None:
        if self.source == "tsv" and not self.path:
            raise ConfigError("path: source tsv needs the corpus file; set data.translation.path")
        if self.source == "num2words" and self.num_train == 0:
            raise ConfigError("num_train: must be > 0 for generated data")
        if self.source == "num2words":
            available = 10 ** self.max_digits
            if self.num_train + self.num_val + self.num_test > available // 2:
                raise ConfigError(f"max_digits: {self.max_digits} digits give {available} numbers, too few for "
                                  f"{self.num_train + self.num_val + self.num_test} distinct ones; raise max_digits")


# ---------------------------------------------------------------------------- sources

def draw_numbers(n: int, max_digits: int, seed: int) -> np.ndarray:
    """``n`` distinct integers, each from a uniformly drawn digit count (1..max_digits).

    Digit counts with few numbers (0-9, 10-99) are soon exhausted; repeats are redrawn,
    which moves their share to the larger counts.
    """
    rng = np.random.default_rng(seed)
    out: set[int] = set()
    while len(out) < n:
        d = int(rng.integers(1, max_digits + 1))
        out.add(int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10 ** d)))
    numbers = np.array(sorted(out), dtype=np.int64)
    rng.shuffle(numbers)
    return numbers


def number_pairs(numbers: np.ndarray, src_lang: str, tgt_lang: str) -> list[tuple[str, str]]:
    from num2words import num2words

    try:
        return [(num2words(int(x), lang=src_lang), num2words(int(x), lang=tgt_lang)) for x in numbers]
    except NotImplementedError as exc:
        raise ConfigError(f"src_lang/tgt_lang: num2words does not support it ({exc})") from None


def read_parallel_tsv(path: Path) -> list[tuple[str, str]]:
    """``source<TAB>target`` lines; extra columns (licence, ids) after the second are ignored.

    A line without a tab or with an empty side raises DataError naming the file and line.
    """
    if not path.exists():
        raise DataError(f"{path}: corpus not found; set data.translation.path to a source<TAB>target file")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
                raise DataError(f"{path}:{i}: expected 'source<TAB>target', got {line[:80]!r}; "
                                f"fix or remove the line")
            pairs.append((normalize(cols[0]), normalize(cols[1])))
    if not pairs:
        raise DataError(f"{path}: no sentence pairs; expected source<TAB>target lines")
    return pairs


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


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{s}\t{t}\n" for s, t in pairs)


# ---------------------------------------------------------------------------- stages

def ingest(cfg: Config, out_dir: Path) -> dict:
    """Write ``{train,val,test}.tsv`` and a checksum manifest to ``out_dir``.

    A relative ``path`` is read from the working directory (the repository root under DVC).
    """
    if cfg.source == "num2words":
        numbers = draw_numbers(cfg.num_train + cfg.num_val + cfg.num_test, cfg.max_digits, cfg.seed)
        test, val = numbers[:cfg.num_test], numbers[cfg.num_test:cfg.num_test + cfg.num_val]
        train = numbers[cfg.num_test + cfg.num_val:]
        split = {k: number_pairs(v, cfg.src_lang, cfg.tgt_lang) for k, v in
                 (("train", train), ("val", val), ("test", test))}
        origin = {"source": f"num2words {cfg.src_lang}->{cfg.tgt_lang}, 1..{cfg.max_digits} digits"}
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


def read_split(raw_dir: Path, split: str) -> list[tuple[str, str]]:
    return read_parallel_tsv(raw_dir / f"{split}.tsv")


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Fit the tokenizer on train, encode every split, write shards + tokenizer.json."""
    pairs = {k: read_split(raw_dir, k) for k in SPLITS}
    tok = Tokenizer.fit([s for p in pairs["train"] for s in p], cfg.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir / TOKENIZER)
    columns, split_meta, longest = {}, {}, 0
    dtype = np.int16 if len(tok) < 2 ** 15 else np.int32
    for name, items in pairs.items():
        src = [np.asarray(tok.encode(s), dtype) for s, _ in items]
        tgt = [np.asarray(tok.encode(t), dtype) for _, t in items]
        keep = [i for i in range(len(items)) if 0 < len(src[i]) <= cfg.max_len and 0 < len(tgt[i]) < cfg.max_len]
        if not keep:
            raise DataError(f"{raw_dir / name}.tsv: every pair is longer than max_len {cfg.max_len} tokens; "
                            f"raise data.translation.max_len")
        longest = max(longest, *(max(len(src[i]), len(tgt[i])) for i in keep))
        columns[name] = {"src.npy": [src[i] for i in keep], "tgt.npy": [tgt[i] for i in keep],
                         "src.txt": [items[i][0] for i in keep], "tgt.txt": [items[i][1] for i in keep]}
        split_meta[name] = {"dropped_too_long": len(items) - len(keep),
                            "src_tokens_mean": float(np.mean([len(src[i]) for i in keep])),
                            "tgt_tokens_mean": float(np.mean([len(tgt[i]) for i in keep]))}
    return write_shards(out_dir, columns, cfg.samples_per_shard, fields=("src.npy", "tgt.npy"),
                        split_meta=split_meta, compress=True, meta={
                            "dataset": "translation", "source": manifest.get("source", ""),
                            "vocab_size": len(tok), "max_len": longest, "assets": {"tokenizer": TOKENIZER},
                            "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}})
