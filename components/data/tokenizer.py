"""Subword tokenizers from Hugging Face's ``tokenizers`` (its Rust trainers), fitted on the train split only.

Byte-pair encoding (Sennrich et al. 2016) by default, unigram (Kudo 2018) as an option. Text
is normalised (whitespace collapsed, ends stripped) and split on spaces; each word gets a
leading ``▁`` (SentencePiece's word-boundary marker, the library's ``Metaspace``), so decoding
is exact: join the pieces and turn every ``▁`` back into a space. One vocabulary serves source
and target (a joint BPE, as in Vaswani et al. 2017), so encoder and decoder can share embeddings.

Ids 0..3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``; padding is id 0 everywhere (the shard
collate pads with zeros). A character never seen in training encodes as ``<unk>``. The
tokenizer is saved as the library's own JSON (``tokenizer.json`` beside the shards) and travels
inside a model's config as that JSON, so a registered model tokenizes raw strings by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer as _Library
from tokenizers import models, pre_tokenizers, trainers

from components.data.manifest import DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
MARK = "\u2581"  # ▁ starts every word
MODELS = ("bpe", "unigram")


def normalize(text: str) -> str:
    return " ".join(text.split())


def _library(model: models.Model) -> _Library:
    tok = _Library(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme="always", split=True)
    return tok


class Tokenizer:
    """A fitted subword tokenizer. Build with :meth:`fit`, :meth:`load` or :meth:`from_dict`."""

    def __init__(self, library: _Library):
        ids = [library.token_to_id(s) for s in SPECIALS]
        if ids != list(range(len(SPECIALS))):
            raise ValueError(f"the vocabulary must start with {SPECIALS} (ids 0..3), has ids {ids} for them")
        self.library = library
        self.vocab = [library.id_to_token(i) for i in range(library.get_vocab_size())]

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def model(self) -> str:
        return json.loads(self.library.to_str())["model"]["type"].lower()

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
            model: Literal["bpe", "unigram"] = "bpe") -> Tokenizer:
        """Fit on ``texts``: a list, or any iterable that can be read twice (a file's lines read
        as they stream: the text is never all in memory, only the trainer's word counts)."""
        chars = {MARK}
        for t in texts:
            chars.update(normalize(t))
        chars.discard(" ")
        alphabet = sorted(chars)
        if vocab_size < len(SPECIALS) + len(alphabet):
            raise ValueError(f"vocab_size {vocab_size} is below the {len(SPECIALS) + len(alphabet)} specials + "
                             f"characters of the train text; raise the tokenizer's vocab_size")
        if model == "bpe":
            library = _library(models.BPE(unk_token=SPECIALS[UNK]))
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=list(SPECIALS), initial_alphabet=alphabet,
                                          show_progress=False)
        elif model == "unigram":
            library = _library(models.Unigram())
            trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                              unk_token=SPECIALS[UNK], initial_alphabet=alphabet,
                                              show_progress=False)
        else:
            raise ValueError(f"tokenizer model must be one of {MODELS}, got {model!r}")
        library.train_from_iterator((normalize(t) for t in texts), trainer,
                                    length=len(texts) if isinstance(texts, Sized) else None)
        return cls(library)

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``<bos>``/``<eos>``)."""
        return self.library.encode(normalize(text), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of every text, in the library's threads."""
        return [e.ids for e in self.library.encode_batch([normalize(t) for t in texts], add_special_tokens=False)]

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
        """What a model's config carries: the library's JSON, as parsed JSON."""
        return {"type": "huggingface", "tokenizer": json.loads(self.library.to_str())}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        kind = data.get("type")
        if kind == "huggingface":
            return cls(_Library.from_str(json.dumps(data["tokenizer"])))
        if kind == "bpe":  # a config written before the library: its vocabulary and merges, in rank order
            vocab = {t: i for i, t in enumerate(data["vocab"])}
            return cls(_library(models.BPE(vocab=vocab, merges=[tuple(m) for m in data["merges"]],
                                           unk_token=SPECIALS[UNK])))
        raise ValueError(f"not a tokenizer this code reads: type {kind!r}")

    def save(self, path: str | Path) -> None:
        self.library.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """The tokenizer saved at ``path``; a missing or corrupt file is a DataError naming it."""
        try:
            return cls(_Library.from_file(str(path)))
        except Exception as exc:  # the library raises plain Exceptions for unreadable JSON
            raise DataError(f"{path}: not a readable tokenizer file ({exc}); re-run the preprocess stage "
                            f"that writes it (`dvc repro preprocess-<dataset>`)") from None
