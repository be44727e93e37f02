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
from components.data.registry import open_split
from components.data.shards import pad_sequences
from components.data.tokenizer import BOS, EOS, PAD, Tokenizer
from components.models.contract import Report
from components.models.attention import Block, sinusoidal_table
from components.models.dropout import Dropout
from components.models.transformer_decoding import DecodeState, beam_search, greedy

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
    arch: Literal["encoder_decoder", "decoder_only"] = "encoder_decoder"  # decoder_only: GPT-style over
    # `source <bos> target <eos>`, decoder_layers causal blocks without cross-attention; encoder_layers unused
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


# ---------------------------------------------------------------------------- the model

class Transformer(nn.Module):
    """The encoder-decoder (``arch: encoder_decoder``) or a decoder-only language model over
    ``source <bos> target <eos>`` (``arch: decoder_only``), from :mod:`components.models.attention`'s
    blocks. Either way ``forward(src, tgt_in)`` gives the logits (B, T, V) of the target positions,
    and :meth:`start`/:meth:`step` decode incrementally (``components/models/transformer_decoding.py``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        if cfg.vocab_size < 5:
            raise ConfigError("vocab_size: unset; the model takes it from the data's tokenizer (bind)")
        self.cfg = cfg
        self.decoder_only = cfg.arch == "decoder_only"
        d, pre = cfg.d_model, cfg.norm == "pre"
        self.tgt_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        one_table = cfg.share_embeddings or self.decoder_only  # one sequence, one table
        self.src_embed = self.tgt_embed if one_table else nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        # positions: a target (<bos> + max_len) after, for the decoder-only model, a source of max_len
        self.positions = 2 * cfg.max_len + 1 if self.decoder_only else cfg.max_len + 1
        if cfg.positional == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(self.positions, d), persistent=False)
            self.pos_embed = None
        else:
            self.pos_embed = nn.Embedding(self.positions, d)
        self.drop = Dropout(cfg.dropout)
        encoder_layers = 0 if self.decoder_only else cfg.encoder_layers
        self.encoder = nn.ModuleList(Block(d, cfg.heads, cfg.d_ff, cfg.dropout, pre) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(Block(d, cfg.heads, cfg.d_ff, cfg.dropout, pre, cross=not self.decoder_only)
                                     for _ in range(cfg.decoder_layers))
        self.enc_norm = nn.LayerNorm(d) if pre and encoder_layers else nn.Identity()
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

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled token embeddings plus positions ``offset..`` (or per token, ``positions``)."""
        x = table(ids) * math.sqrt(self.cfg.d_model)
        if positions is None:
            if ids.shape[1] + offset > self.positions:
                raise ValueError(f"sequence of {ids.shape[1] + offset} tokens exceeds max_len {self.cfg.max_len}")
            if self.pos_embed is None:
                return self.drop(x + self.pe[offset:offset + ids.shape[1]])
            positions = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        return self.drop(x + (self.pe[positions] if self.pos_embed is None else self.pos_embed(positions)))

    @staticmethod
    def source_mask(src: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, S) True at real source tokens: every query may attend to them."""
        return (src != PAD)[:, None, None, :]

    # -------------------------------------------------------------- encoder-decoder

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
            y = layer(y, causal=True, memory=memory, memory_mask=memory_mask,
                      cache=None if caches is None else caches[i])
        return self.generator(self.dec_norm(y))

    # -------------------------------------------------------------- decoder-only

    def _stack(self, ids: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               causal: bool = False, caches: list[dict] | None = None) -> torch.Tensor:
        """The decoder-only stack's last hidden states (B, L, d) over ``ids``."""
        h = self._embed(self.tgt_embed, ids, positions=positions)
        for i, layer in enumerate(self.decoder):
            h = layer(h, mask, causal=causal, cache=None if caches is None else caches[i])
        return self.dec_norm(h)

    def _language_model(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the target positions of ``source <bos> target``, one causal pass.

        Row b is its source's real tokens, then its ``tgt_in`` (from <bos>), then padding: the
        padding only ever follows real tokens, so the causal mask is the only mask needed."""
        b, s = src.shape
        t = tgt_in.shape[1]
        start = (src != PAD).sum(1, keepdim=True)  # where each row's <bos> goes
        if s:
            i = torch.arange(s + t, device=src.device).expand(b, -1)
            j = i - start
            seq = torch.where(i < start, src.gather(1, i.clamp(max=s - 1)),
                              torch.where(j < t, tgt_in.gather(1, j.clamp(0, t - 1)), PAD))
        else:
            seq = tgt_in
        h = self._stack(seq, causal=True)
        at = (start + torch.arange(t, device=src.device))[..., None].expand(-1, -1, h.shape[-1])
        return self.generator(h.gather(1, at))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        if self.decoder_only:
            return self._language_model(src, tgt_in)
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    # -------------------------------------------------------------- incremental decoding

    def start(self, src: torch.Tensor, repeat: int = 1) -> DecodeState:
        """The state decoding starts from, each source ``repeat`` times (a beam per source).

        Encoder-decoder: the encoded sources. Decoder-only: the sources, left-padded (so every
        row's next token goes in the same column), run through the stack once to fill the caches;
        each row keeps its own positions, as in training."""
        caches: list[dict] = [{} for _ in self.decoder]
        if not self.decoder_only:
            memory, mask = self.encode(src)
            if repeat > 1:
                memory, mask = memory.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
            return DecodeState(caches, {"memory": memory, "mask": mask})
        b, s = src.shape
        start = (src != PAD).sum(1)
        j = torch.arange(s, device=src.device) - (s - start)[:, None]  # position in the source; < 0: padding
        real = j >= 0
        if s:
            left = torch.where(real, src.gather(1, j.clamp(min=0)), PAD)
            causal = torch.ones(s, s, dtype=torch.bool, device=src.device).tril()
            own = torch.eye(s, dtype=torch.bool, device=src.device)  # a padding query sees itself: no empty row
            allowed = causal & (real[:, None, :] | own)
            self._stack(left, positions=j.clamp(min=0), mask=allowed[:, None], caches=caches)
        keys = real[:, None, None, :]
        if repeat > 1:
            keys, start = keys.repeat_interleave(repeat, 0), start.repeat_interleave(repeat, 0)
            for cache in caches:
                for part in cache.values():
                    part.update({k: part[k].repeat_interleave(repeat, 0) for k in ("k", "v")})
        return DecodeState(caches, {"keys": keys, "start": start})

    def step(self, state: DecodeState, token: torch.Tensor, t: int) -> torch.Tensor:
        """Logits (N, V) of the token after ``token`` (N, 1), the ``t``-th target input (0: <bos>)."""
        if not self.decoder_only:
            return self.decode(token, state.extra["memory"], state.extra["mask"], state.caches, offset=t)[:, -1]
        keys, start = state.extra["keys"], state.extra["start"]
        mask = torch.cat([keys, keys.new_ones(*keys.shape[:3], t + 1)], -1)
        h = self._stack(token, positions=(start + t)[:, None], mask=mask, caches=state.caches)
        return self.generator(h[:, -1])


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
    from components.data.registry import open_split
    from components.data.shards import read_stats
    from components.data.translation import STRATA
    from components.evaluation import translation

    model.eval()
    tok = _tokenizer(model)

    def decoder(beam: int):
        return lambda src: [tok.decode(r) for r in translate(model, src.long(), cfg, beam).tolist()]

    stratified = read_stats(shard_dir).get("stratified", False)  # the pairs' strata are in the shards
    batches = open_split(shard_dir, split, batch_size=500,
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


def usage(name: str, cfg: Config) -> str:
    return (f'`mlflow.pyfunc.load_model("models:/{name}@champion").predict(["three hundred and forty-two"])` '
            f'returns the German translations as a list of strings; `params={{"beam_size": 1}}` decodes greedily.')
