"""CLIP (Radford et al. 2021): contrastive image–text pre-training, zero-shot classification, retrieval.

- Image encoder: a Vision Transformer (Dosovitskiy et al. 2021) over ``patch_size`` patches
  with a class token and pre-norm blocks (``components/models/vit.py``, the classification
  family's ``arch: vit`` too), or a ResNet from the ResNet family
  (``image_encoder: resnet``, its classifier as the projection);
- text encoder: a Transformer with a causal mask over ``<bos>`` caption ``<eos>``, pooled at
  the ``<eos>`` token (the last non-pad one);
- linear projections into a joint ``embed_dim`` space, L2 normalisation, and a learnable
  temperature: logits = exp(t) · cos, with t initialised to log(1/0.07) and exp(t) clamped
  at 100;
- the symmetric InfoNCE loss (the survey's eq. 8): the mean of cross-entropy over image→text
  and text→image logits, the matching pair being the target.

Under DDP the logits span the global batch: every Ray worker gathers all workers' embeddings
(``clip_loss.gather``), its own entering with gradients, and computes the loss of the whole
global batch. Each rank's copy of a slot sends its gradient back to the slot's owner (an
all-reduce in backward), so with DDP's averaging, values and gradients equal those of one
process on the concatenated batch (tested), and negatives come from every worker.
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
from components.data.tokenizer import EOS, PAD, Tokenizer
from components.models import resnet

# The family's evaluate and validate live beside the model, in clip_eval.
from components.models.clip_eval import evaluate as evaluate
from components.models.clip_eval import tokens_of
from components.models.clip_eval import validate as validate
from components.models.clip_loss import contrastive_loss, gather
from components.models.common import bind_images
from components.models.contract import Report
from components.models.vit import VisionTransformer, encoder_blocks

PAPER = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision (arXiv:2103.00020)"
PRIMARY_METRIC, PRIMARY_MODE = "zero_shot_accuracy", "max"  # test digits, prompt templates never seen in training
SELECT_BY = (("zero_shot_accuracy", "max"), ("loss", "min"))
VAL_METRIC, VAL_MODE = "val_zero_shot_accuracy", "max"
MAX_LOGIT_SCALE = 100.0


@dataclass
class Config:
    """``train.clip.model``. The tokenizer, vocabulary and class names come from the data."""
    image_encoder: Literal["vit", "resnet"] = "vit"
    image_size: int = field(default=8, metadata=bounds(ge=4))
    in_channels: int = field(default=1, metadata=bounds(ge=1))
    patch_size: int = field(default=2, metadata=bounds(ge=1))
    width: int = field(default=64, metadata=bounds(ge=8))  # ViT and text widths
    image_layers: int = field(default=2, metadata=bounds(ge=1))
    text_layers: int = field(default=2, metadata=bounds(ge=1))
    heads: int = field(default=4, metadata=bounds(ge=1))
    resnet_depth: int = field(default=8, metadata=bounds(ge=8))  # image_encoder: resnet
    embed_dim: int = field(default=64, metadata=bounds(ge=2))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    init_temperature: float = field(default=0.07, metadata=bounds(gt=0.01, le=1))
    augment: bool = True  # train images come augmented from the loader (data.<name>.augment: crops, shifts)
    max_len: int = field(default=0, metadata=bounds(ge=0))  # 0: from the data
    vocab_size: int = field(default=0, metadata=bounds(ge=0))  # 0: from the data's tokenizer
    tokenizer: dict[str, Any] = field(default_factory=dict)  # filled from the data at train time; leave unset
    class_names: list[str] = field(default_factory=list)  # from the data, for zero-shot prompts
    zero_shot_templates: list[str] = field(default_factory=list)  # from the data: never used in training

    def validate(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"heads: width ({self.width}) must be divisible by heads ({self.heads})")
        if self.image_encoder == "vit" and self.image_size % self.patch_size:
            raise ConfigError(f"patch_size: must divide image_size ({self.image_size}), got {self.patch_size}")


class TextTransformer(nn.Module):
    """Token ids (B, L), ``<eos>``-terminated and zero-padded -> (B, embed_dim), pooled at ``<eos>``."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.01)
        self.blocks = encoder_blocks(cfg.width, cfg.heads, cfg.text_layers, cfg.dropout)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(cfg.max_len), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:length]
        # Causal: a position sees only what precedes it, so the padding after <eos> never reaches it.
        h = self.ln_final(self.blocks(h, mask=self.causal[:length, :length], is_causal=True))
        is_eos = tokens == EOS
        last_token = (tokens != PAD).sum(1).clamp(min=1) - 1  # a sequence cut without <eos>: its last token
        at = torch.where(is_eos.any(1), is_eos.int().argmax(1), last_token)  # the first <eos>
        return self.proj(h[torch.arange(len(h), device=h.device), at])


class CLIP(nn.Module):
    """(images, tokens) -> (image embeddings, text embeddings, logit scale); embeddings L2-normalised."""

    def __init__(self, cfg: Config):
        super().__init__()
        if not cfg.vocab_size or not cfg.max_len:
            raise ConfigError("vocab_size/max_len: unset; the model takes them from the data's tokenizer (bind)")
        self.cfg = cfg
        if cfg.image_encoder == "vit":
            self.visual = VisionTransformer(cfg.image_size, cfg.in_channels, cfg.patch_size, cfg.width,
                                            cfg.image_layers, cfg.heads, cfg.embed_dim, cfg.dropout)
        else:
            self.visual = resnet.build(resnet.Config(depth=cfg.resnet_depth, in_channels=cfg.in_channels,
                                                     num_classes=cfg.embed_dim, image_size=cfg.image_size))
        self.text = TextTransformer(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.tokenizer = Tokenizer.from_dict(cfg.tokenizer) if cfg.tokenizer else None

    def scale(self) -> torch.Tensor:
        """exp(t), clamped at 100 (Radford et al. 2021, section 2.5)."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.scale()


def build(cfg: Config) -> CLIP:
    return CLIP(cfg)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    """Tokenizer, vocabulary, caption length, class names and zero-shot templates from the shards."""
    assets = stats.get("assets", {})
    if "tokenizer" not in assets or "max_len" not in stats:
        raise ConfigError(f"{data_dir}: these shards have no captions and tokenizer; CLIP needs an image-caption "
                          f"dataset (a data section of type captions)")
    bind_images(cfg, stats)
    tok = Tokenizer.load(Path(data_dir) / assets["tokenizer"])
    return replace(cfg, vocab_size=len(tok), max_len=stats["max_len"], tokenizer=tok.to_dict(),
                   class_names=list(stats.get("class_names", [])),
                   zero_shot_templates=list(stats.get("zero_shot_templates", [])))


# ---------------------------------------------------------------------------- training

def _one_caption(tokens: torch.Tensor) -> torch.Tensor:
    """(B, K, L) -> (B, L): one of each image's K captions, drawn at random."""
    if tokens.dim() == 2:
        return tokens
    pick = torch.randint(tokens.shape[1], (len(tokens),), device=tokens.device)  # drawn there: no copy, no wait
    return tokens[torch.arange(len(tokens), device=tokens.device), pick]


def loader_options(cfg: Config, world_size: int) -> dict:
    """Training batches come augmented from the loader workers (the data section's style)."""
    return {"augment": cfg.augment}


def training_step(model: nn.Module, batch: tuple, cfg: Config, label_smoothing: float = 0.0,
                  progress: float = 0.0) -> dict[str, Any]:
    images, tokens = batch[0], batch[1].long()
    image, text, scale = model(images, _one_caption(tokens))
    image, text = gather(image), gather(text)
    loss, logits = contrastive_loss(image, text, scale)
    with torch.no_grad():
        correct = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).sum()
    # The loss is the global batch's on every rank; the loop weights ranks by count (equal here).
    return {"loss": loss, "count": torch.tensor(len(logits)), "correct": correct,
            "log": {"logit_scale": scale.detach(), "global_batch": float(len(logits))}}


@torch.no_grad()
def eval_step(model: nn.Module, batch: tuple, cfg: Config) -> dict[str, torch.Tensor]:
    tokens = batch[1].long()
    image, text, scale = model(batch[0], tokens[:, 0] if tokens.dim() == 3 else tokens)
    loss, logits = contrastive_loss(image, text, scale)
    n = len(logits)
    correct = (logits.argmax(1) == torch.arange(n, device=logits.device)).sum()
    return {"loss": loss * n, "correct": correct, "count": torch.tensor(n)}


def report(result: dict, title: str, name: str, where: str) -> Report:
    """Retrieval and zero-shot metrics as markdown; an image–caption similarity matrix, the
    zero-shot confusion and the image embeddings as figures."""
    from components.evaluation import plots

    caption = f"{title}: cosine similarity, 16 test images x their captions"
    figures = {f"similarity_{name}.png": plots.similarity(result["similarity"], result["images"], result["captions"],
                                                          caption)}
    lines = [f"## {title}\n",
             f"{result['num_samples']} test images, {result['unique_captions']} distinct captions; InfoNCE "
             f"{result['loss']:.4f}, learned temperature {result['temperature']:.4f} (logit scale "
             f"{result['logit_scale']:.1f}, clamped at {MAX_LOGIT_SCALE:.0f}).\n",
             "| retrieval | R@1 | R@5 | R@10 |\n|---|---|---|---|",
             *(f"| {d.replace('_', ' ')} | " + " | ".join(f"{result[f'{d}_r{k}']:.4f}" for k in (1, 5, 10)) + " |"
               for d in ("image_to_text", "text_to_image")), ""]
    if "zero_shot_accuracy" in result:
        figures[f"zero_shot_confusion_{name}.png"] = plots.confusion(
            np.array(result["confusion_matrix"]), f"{title}: zero-shot accuracy {result['zero_shot_accuracy']:.4f}")
        figures[f"embeddings_{name}.png"] = plots.latent_projection(result["embeddings"], result["labels"],
                                                                    f"{title}: image embeddings (PCA)")
        lines.append(f"Zero-shot top-1 {result['zero_shot_accuracy']:.4f} (macro-F1 {result['zero_shot_macro_f1']:.4f}) "
                     f"with prompt templates never seen in training; linear probe on frozen image embeddings "
                     f"{result['linear_probe_accuracy']:.4f}.\n")
    lines.append(f"Images: `{where}/{{similarity,zero_shot_confusion,embeddings}}_{name}.png`\n")
    return Report("\n".join(lines), figures)


# ------------------------------------------------------------------------------------ serving

MODES = ("embed_image", "embed_text", "score")


@torch.no_grad()
def predict(model: CLIP, inputs: Any, cfg: Config, mode: str = "score") -> np.ndarray:
    """``inputs``: a DataFrame (or dict of lists) with ``image`` (rows of C·H·W pixel values in
    [0, 1]) and/or ``text`` (strings). ``embed_image`` / ``embed_text`` -> (N, embed_dim)
    normalised embeddings; ``score`` -> (N,) scaled cosine of each row's image and text."""
    model.eval()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    columns = {k: list(inputs[k]) for k in ("image", "text") if k in inputs} if hasattr(inputs, "__getitem__") else {}
    need = {"embed_image": ("image",), "embed_text": ("text",), "score": ("image", "text")}[mode]
    missing = [k for k in need if k not in columns or any(v is None for v in columns[k])]
    if missing:
        raise ValueError(f"mode {mode!r} needs column(s) {missing}: 'image' holds rows of "
                         f"{cfg.in_channels * cfg.image_size ** 2} pixel values in [0, 1], 'text' strings")
    out = {}
    if "image" in need:
        pixels = cfg.in_channels * cfg.image_size ** 2
        try:
            rows = np.asarray([np.asarray(v, dtype=np.float32).ravel() for v in columns["image"]])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"image: expected numeric rows of {pixels} pixel values ({exc})") from None
        if rows.ndim != 2 or rows.shape[1] != pixels:
            raise ValueError(f"image: expected rows of {pixels} pixel values (C·H·W = {cfg.in_channels}·"
                             f"{cfg.image_size}·{cfg.image_size}), got shape {rows.shape}")
        out["image"] = model.encode_image(torch.from_numpy(rows).view(-1, cfg.in_channels, cfg.image_size, cfg.image_size))
    if "text" in need:
        texts = columns["text"]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("text: expected strings")
        out["text"] = model.encode_text(tokens_of(model, texts))
    if mode == "embed_image":
        return out["image"].numpy()
    if mode == "embed_text":
        return out["text"].numpy()
    return (model.scale() * (out["image"] * out["text"]).sum(1)).numpy()


def signature(cfg: Config):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(Array("double"), "image", required=False),
                                         ColSpec("string", "text", required=False)]),
                          params=ParamSchema([ParamSpec("mode", "string", "score")]))


def serving_example(cfg: Config):
    import pandas as pd

    return pd.DataFrame({"image": [np.zeros(cfg.in_channels * cfg.image_size ** 2).tolist()] * 2,
                         "text": ["a bold seven", "a thin, upright one"]})


def usage(name: str, cfg: Config) -> str:
    return (f'`model = mlflow.pyfunc.load_model("models:/{name}@champion")`; `model.predict(pd.DataFrame({{"image": '
            f'rows, "text": captions}}))` scores each image–caption pair (scaled cosine); `params={{"mode": '
            f'"embed_image"}}` or `"embed_text"` returns normalised embeddings (N, {cfg.embed_dim}). Images are rows '
            f'of {cfg.in_channels * cfg.image_size ** 2} pixel values in [0, 1] (C·H·W), like sklearn\'s '
            f'digits.data / 16.')
