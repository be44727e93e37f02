"""The encoder-decoder Transformer of Vaswani et al. 2017 ("Attention Is All You Need").

Paper facts this module follows:

- token embeddings are multiplied by sqrt(d_model) and added to sinusoidal position
  encodings PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)
  (Section 3.5); learned position embeddings are the option the paper compared;
- attention is softmax(QK^T / sqrt(d_k)) V over ``heads`` heads of d_k = d_model / heads
  (Section 3.2), computed by torch's fused ``scaled_dot_product_attention`` (training on
  the CPU: ``components/models/dropout.py``, whose dropout draws a quarter of torch's random numbers);
- each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-norm, Section 5.4);
  ``norm: pre`` gives x + Dropout(Sublayer(LayerNorm(x))) with a final LayerNorm per stack,
  which trains without a warm-up more easily;
- the decoder's self-attention is causal; its second attention reads the encoder output;
- the decoder's input embedding and the pre-softmax projection share one matrix (Section 3.4);
  with a joint source/target vocabulary the encoder's embedding is shared too;
- label smoothing 0.1 and Adam(0.9, 0.98, 1e-9) with lr = d_model^-0.5 * min(s^-0.5, s * w^-1.5)
  are the training recipe (Section 5.3-5.4), set in params.yaml.

Masks: source padding is masked in encoder self-attention and in cross-attention. Target
padding needs no mask: padding only ever follows the real tokens, and the causal mask
already keeps every real position from seeing anything after it.

Decoding (greedy and beam search with the GNMT length penalty ((5 + |Y|) / 6)^alpha) runs
incrementally: each decoder layer caches its self-attention keys/values and the
cross-attention keys/values of the encoder output, so step t costs O(t), not O(t^2).

Batches are ``(src, tgt)`` int tensors of token ids padded with 0; ``tgt`` holds neither
``<bos>`` nor ``<eos>``: :func:`training_step` adds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.config import ConfigError, bounds
from components.data.shards import pad_sequences
from components.data.tokenizer import BOS, EOS, PAD, Tokenizer
from components.models.contract import Report
from components.models.dropout import Dropout, attention
from components.models.transformer_decoding import beam_search, greedy

PAPER = "Vaswani et al. 2017, Attention Is All You Need (arXiv:1706.03762)"
PRIMARY_METRIC = "exact_match"  # test exact match of beam-search translations; register compares it
PRIMARY_MODE = "max"
SELECT_BY = (("exact_match", "max"), ("chrf", "max"))  # evaluate picks a candidate on val by these
VAL_METRIC, VAL_MODE = "val_accuracy", "max"  # per-epoch metric tune's ASHA compares (token accuracy)


@dataclass
class Config:
    """``train.transformer.model``. ``vocab_size`` and ``tokenizer`` come from the data."""
    d_model: int = field(default=128, metadata=bounds(ge=8))
    heads: int = field(default=4, metadata=bounds(ge=1))
    encoder_layers: int = field(default=2, metadata=bounds(ge=1))
    decoder_layers: int = field(default=2, metadata=bounds(ge=1))
    d_ff: int = field(default=512, metadata=bounds(ge=1))
    dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    norm: Literal["post", "pre"] = "post"
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    share_embeddings: bool = True  # encoder and decoder embeddings (needs the joint vocabulary)
    tie_output: bool = True  # decoder embedding == output projection
    max_len: int = field(default=64, metadata=bounds(ge=2))  # longest source or target (tokens)
    beam_size: int = field(default=4, metadata=bounds(ge=1))
    length_penalty: float = field(default=0.6, metadata=bounds(ge=0))
    vocab_size: int = field(default=0, metadata=bounds(ge=0))  # 0: from the data's tokenizer
    tokenizer: dict[str, Any] = field(default_factory=dict)  # filled from the data at train time; leave unset

    def validate(self) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"heads: d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"d_model: sinusoidal position encoding needs an even d_model, got {self.d_model}")


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    """Fill the data-derived fields (tokenizer, vocab size) from the shard directory."""
    assets = stats.get("assets", {})
    if "tokenizer" not in assets:
        raise ConfigError(f"{data_dir}: the shards have no tokenizer; the transformer needs a translation "
                          f"dataset (algorithms.transformer.dataset)")
    tok = Tokenizer.load(Path(data_dir) / assets["tokenizer"])
    if stats.get("max_len", 0) + 1 > cfg.max_len:  # +1 for <bos>/<eos>
        raise ConfigError(f"max_len: the data has sequences of {stats['max_len']} tokens; "
                          f"set train.transformer.model.max_len >= {stats['max_len'] + 1}")
    return replace(cfg, vocab_size=len(tok), tokenizer=tok.to_dict())


# ---------------------------------------------------------------------------- layers

def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """PE (length, d_model): sin on even channels, cos on odd, wavelengths 2pi..10000*2pi."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention``.

    ``mask`` is boolean, broadcastable to (B, heads, Lq, Lk), True where attending is allowed.
    ``cache`` (a dict) makes it incremental: self-attention appends this step's keys and
    values; cross-attention (``static=True``) computes the memory's keys/values once.
    """

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.d_k, self.dropout = heads, d_model // heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, d_k)
        return x.unflatten(-1, (self.heads, self.d_k)).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, cache: dict | None = None, static: bool = False) -> torch.Tensor:
        q = self._split(self.q(x))
        if cache is not None and static and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = (self._split(t) for t in self.kv(memory).chunk(2, dim=-1))
            if cache is not None:
                if not static and "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        out = attention(q, k, v, mask, causal=causal and cache is None,  # a cached step attends to all of its past
                        dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), Dropout(dropout), nn.Linear(d_ff, d_model))


class Residual(nn.Module):
    """Post-norm LN(x + drop(f(x))) or pre-norm x + drop(f(LN(x)))."""

    def __init__(self, d_model: int, dropout: float, pre: bool):
        super().__init__()
        self.norm, self.drop, self.pre = nn.LayerNorm(d_model), Dropout(dropout), pre

    def forward(self, x: torch.Tensor, f) -> torch.Tensor:
        if self.pre:
            return x + self.drop(f(self.norm(x)))
        return self.norm(x + self.drop(f(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        pre = cfg.norm == "pre"
        self.attn = Attention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1, self.res2 = Residual(cfg.d_model, cfg.dropout, pre), Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.res1(x, lambda h: self.attn(h, h, mask))
        return self.res2(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = Attention(cfg.d_model, cfg.heads, cfg.dropout)
        self.cross_attn = Attention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res = nn.ModuleList(Residual(cfg.d_model, cfg.dropout, pre) for _ in range(3))

    def forward(self, y: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor:
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})
        y = self.res[0](y, lambda h: self.self_attn(h, h, causal=True, cache=self_cache))
        y = self.res[1](y, lambda h: self.cross_attn(h, memory, memory_mask, cache=cross_cache, static=True))
        return self.res[2](y, self.ff)


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        if cfg.vocab_size < 5:
            raise ConfigError("vocab_size: unset; the model takes it from the data's tokenizer (bind)")
        self.cfg = cfg
        d = cfg.d_model
        self.tgt_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        self.src_embed = self.tgt_embed if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        if cfg.positional == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.max_len + 1, d), persistent=False)
            self.pos_embed = None
        else:
            self.pos_embed = nn.Embedding(cfg.max_len + 1, d)
        self.drop = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        pre = cfg.norm == "pre"
        self.enc_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.generator = nn.Linear(d, cfg.vocab_size, bias=False)
        # Built once here, not per request: the model translates raw strings with it.
        self.tokenizer = Tokenizer.from_dict(cfg.tokenizer) if cfg.tokenizer else None
        self._init_weights()
        if cfg.tie_output:
            self.generator.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        for emb in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(emb.weight, 0.0, self.cfg.d_model ** -0.5)  # x sqrt(d_model) -> unit scale
            with torch.no_grad():
                emb.weight[PAD].zero_()

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        if ids.shape[1] + offset > self.cfg.max_len + 1:
            raise ValueError(f"sequence of {ids.shape[1] + offset} tokens exceeds max_len {self.cfg.max_len}")
        x = table(ids) * math.sqrt(self.cfg.d_model)
        if self.pos_embed is None:
            x = x + self.pe[offset:offset + ids.shape[1]]
        else:
            x = x + self.pos_embed(torch.arange(offset, offset + ids.shape[1], device=ids.device))
        return self.drop(x)

    @staticmethod
    def source_mask(src: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, S) True at real source tokens: every query may attend to them."""
        return (src != PAD)[:, None, None, :]

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.source_mask(src)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
               caches: list[dict] | None = None, offset: int = 0) -> torch.Tensor:
        """Logits (B, T, V) for decoder inputs ``tgt_in`` (starting with <bos>)."""
        y = self._embed(self.tgt_embed, tgt_in, offset)
        for i, layer in enumerate(self.decoder):
            y = layer(y, memory, memory_mask, None if caches is None else caches[i])
        return self.generator(self.dec_norm(y))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


# ---------------------------------------------------------------------------- the family contract

def build(cfg: Config) -> nn.Module:
    return Transformer(cfg)


def shift(tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder input ``<bos> y`` and labels ``y <eos>`` from padded targets ``y``."""
    lengths = (tgt != PAD).sum(1)
    labels = F.pad(tgt, (0, 1), value=PAD)
    labels.scatter_(1, lengths[:, None], EOS)  # a scalar operand: assigning by index would copy it over and wait
    return F.pad(tgt, (1, 0), value=BOS), labels


def _teacher_forced(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], label_smoothing: float,
                    reduction: str) -> dict[str, torch.Tensor]:
    src, tgt = (t.long() for t in batch)  # shards store int16 ids
    tgt_in, labels = shift(tgt)
    logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD,
                           label_smoothing=label_smoothing, reduction=reduction)
    with torch.no_grad():
        real = labels != PAD
        correct = ((logits.argmax(-1) == labels) & real).sum()
    return {"loss": loss, "correct": correct, "count": real.sum()}


def training_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], cfg: Config,
                  label_smoothing: float = 0.0, progress: float = 0.0) -> dict[str, torch.Tensor]:
    """Label-smoothed cross-entropy, the mean over target tokens (padding ignored)."""
    return _teacher_forced(model, batch, label_smoothing, "mean")


@torch.no_grad()
def eval_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Sums over target tokens (teacher forcing), so workers can all-reduce exact means."""
    return _teacher_forced(model, batch, 0.0, "sum")


def prepare_input(batch: Any, tok: Tokenizer, max_len: int) -> torch.Tensor:
    """Validate a list of source strings and return them as padded ids (B, S)."""
    if isinstance(batch, np.ndarray):
        batch = batch.tolist()
    elif hasattr(batch, "iloc"):  # a pandas DataFrame/Series: its first column
        batch = (batch.iloc[:, 0] if batch.ndim == 2 else batch).tolist()
    if isinstance(batch, str) or not isinstance(batch, (list, tuple)):
        raise TypeError(f"expected a list of source strings, got {type(batch).__name__}")
    bad = [i for i, s in enumerate(batch) if not isinstance(s, str)]
    if bad:
        raise TypeError(f"item {bad[0]} is {type(batch[bad[0]]).__name__}, expected a string")
    ids = [tok.encode(s) for s in batch]
    too_long = [i for i, x in enumerate(ids) if len(x) > max_len]
    if too_long:
        raise ValueError(f"source {too_long[0]} has {len(ids[too_long[0]])} tokens; the model reads at most "
                         f"{max_len}")
    return pad_sequences([torch.tensor(x, dtype=torch.long) for x in ids])


@torch.no_grad()
def translate(model: nn.Module, src: torch.Tensor, cfg: Config, beam_size: int | None = None) -> torch.Tensor:
    beam_size = cfg.beam_size if beam_size is None else beam_size
    if beam_size == 1:
        return greedy(model, src)
    return beam_search(model, src, beam_size, cfg.length_penalty)


@torch.no_grad()
def predict(model: nn.Module, batch: Any, cfg: Config, beam_size: int | None = None) -> list[str]:
    """Translations of a list of source strings (beam search of ``cfg.beam_size``; 1 = greedy)."""
    model.eval()
    tok = _tokenizer(model)
    src = prepare_input(batch, tok, cfg.max_len)
    if len(src) == 0:
        return []
    return [tok.decode(row) for row in translate(model, src, cfg, beam_size).tolist()]


def _tokenizer(model: nn.Module) -> Tokenizer:
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; build it from a config bound to the data (train saves one)")
    return model.tokenizer


# ---------------------------------------------------------------------------- evaluate / register

def evaluate(model: nn.Module, cfg: Config, shard_dir, split: str, detail: bool = True) -> dict:
    """Exact match, BLEU and chrF of beam search (the unprefixed metrics) and greedy (``greedy_*``)."""
    from components.data.shards import ShardDataset, read_stats
    from components.data.translation import STRATA
    from components.evaluation import translation

    model.eval()
    tok = _tokenizer(model)

    def decoder(beam: int):
        return lambda src: [tok.decode(r) for r in translate(model, src.long(), cfg, beam).tolist()]

    stratified = read_stats(shard_dir).get("stratified", False)  # the pairs' strata are in the shards
    batches = ShardDataset(shard_dir, split, batch_size=500,
                           fields=("src.npy", "src.txt", "tgt.txt") + (("stratum.txt",) if stratified else ()))
    return translation.evaluate({"beam": decoder(cfg.beam_size), "greedy": decoder(1)}, batches, STRATA)


def report(result: dict, title: str, name: str, where: str) -> Report:
    """Metrics, exact match per stratum and the best/worst translations as markdown; exact match
    by source length (and by stratum, where the data has strata) as figures."""
    from components.evaluation import translation

    figures = {f"exact_match_by_length_{name}.png":
               translation.exact_match_figure(result, f"{title}: exact match by source length")}
    if "by_stratum" in result:
        figures[f"exact_match_by_stratum_{name}.png"] = translation.exact_match_figure(
            result, f"{title}: exact match by number structure", "by_stratum", "stratum")
    return Report(translation.markdown(result, title), figures)


def signature(cfg: Config):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("beam_size", "long", cfg.beam_size)]))


def serving_example(cfg: Config) -> list[str]:
    return ["three hundred and forty-two", "seventeen"]


def usage(name: str) -> str:
    return (f'`mlflow.pyfunc.load_model("models:/{name}@champion").predict(["three hundred and forty-two"])` '
            f'returns the German translations as a list of strings; `params={{"beam_size": 1}}` decodes greedily.')
