"""A byte-pair-encoding subword tokenizer (Sennrich et al. 2016), fitted on the train split only.

Text is normalised (whitespace collapsed, ends stripped) and split on spaces; each word
gets a leading ``▁`` (the word-boundary marker of SentencePiece), so decoding is exact:
join the pieces and turn every ``▁`` back into a space. Fitting starts from the
characters of the train text and repeatedly merges the most frequent adjacent pair
(ties broken by the pair itself, so the result is deterministic) until the vocabulary
reaches ``vocab_size`` or no pair occurs twice. One vocabulary serves source and target
(a joint BPE, as in Vaswani et al. 2017), so encoder and decoder can share embeddings.

Ids 0..3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``; padding is id 0 everywhere
(the shard collate pads with zeros). A character never seen in training encodes as ``<unk>``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
MARK = "\u2581"  # ▁ starts every word


def normalize(text: str) -> str:
    return " ".join(text.split())


def _words(text: str) -> list[str]:
    return [MARK + w for w in normalize(text).split(" ") if w]


class Tokenizer:
    """BPE over a joint source/target vocabulary. Build with :meth:`fit` or :meth:`from_dict`."""

    def __init__(self, vocab: list[str], merges: list[tuple[str, str]]):
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocab must start with {SPECIALS}")
        self.vocab = list(vocab)
        self.merges = [tuple(m) for m in merges]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        counts = Counter(w for t in texts for w in _words(t))
        alphabet = sorted({c for w in counts for c in w})
        vocab = [*SPECIALS, *alphabet]
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab)} specials + characters of the "
                             f"train text; raise the tokenizer's vocab_size")
        words = [list(w) for w in counts]
        freq = list(counts.values())
        pairs: Counter = Counter()
        where: dict[tuple[str, str], set[int]] = defaultdict(set)
        for i, w in enumerate(words):
            for p in zip(w, w[1:]):
                pairs[p] += freq[i]
                where[p].add(i)
        merges: list[tuple[str, str]] = []
        while len(vocab) < vocab_size and pairs:
            best, n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
            if n < min_frequency:
                break
            merges.append(best)
            vocab.append(best[0] + best[1])
            for i in list(where[best]):
                w = words[i]
                for p in zip(w, w[1:]):  # retract the word's pairs, re-add after merging
                    pairs[p] -= freq[i]
                    if pairs[p] <= 0:
                        del pairs[p]
                    where[p].discard(i)
                words[i] = w = _merge(w, best)
                for p in zip(w, w[1:]):
                    pairs[p] += freq[i]
                    where[p].add(i)
            where.pop(best, None)
        return cls(vocab, merges)

    # ------------------------------------------------------------------ encode / decode

    def _encode_word(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.ranks.get(p, len(self.ranks)), p) for p in zip(parts, parts[1:])]
            rank, pair = min(ranked)
            if rank == len(self.ranks):
                break
            parts = _merge(parts, pair)
        ids = [self.ids.get(p, UNK) for p in parts]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``<bos>``/``<eos>``)."""
        return [i for w in _words(text) for i in self._encode_word(w)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; stops at the first ``<eos>``, skips ``<pad>`` and ``<bos>``."""
        pieces = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            pieces.append(self.vocab[i] if 0 <= i < len(self.vocab) else SPECIALS[UNK])
        return "".join(pieces).replace(MARK, " ").strip()

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        return {"type": "bpe", "vocab": self.vocab, "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if data.get("type") != "bpe":
            raise ValueError(f"not a BPE tokenizer: type {data.get('type')!r}")
        return cls(data["vocab"], data["merges"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _merge(parts: list[str], pair: tuple[str, str]) -> list[str]:
    out, i, a, b = [], 0, *pair
    while i < len(parts):
        if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out
