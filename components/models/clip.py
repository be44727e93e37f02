"""CLIP (Radford et al. 2021): contrastive image–text pre-training, zero-shot classification, retrieval.

- Image encoder: a Vision Transformer (Dosovitskiy et al. 2021) over ``patch_size`` patches
  with a class token and pre-norm blocks, or a ResNet from the ResNet family
  (``image_encoder: resnet``, its classifier as the projection);
- text encoder: a Transformer with a causal mask over ``<bos>`` caption ``<eos>``, pooled at
  the ``<eos>`` token (the last non-pad one);
- linear projections into a joint ``embed_dim`` space, L2 normalisation, and a learnable
  temperature: logits = exp(t) · cos, with t initialised to log(1/0.07) and exp(t) clamped
  at 100;
- the symmetric InfoNCE loss (the survey's eq. 8): the mean of cross-entropy over image→text
  and text→image logits, the matching pair being the target.

Under DDP the logits span the global batch: every Ray worker gathers all workers' embeddings
(:func:`gather`), its own entering with gradients, and computes the loss of the whole
global batch. Each rank's copy of a slot sends its gradient back to the slot's owner (an
all-reduce in backward), so with DDP's averaging, values and gradients equal those of one
process on the concatenated batch (tested), and negatives come from every worker.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from components.config import ConfigError, bounds
from components.data.tokenizer import EOS, PAD, Tokenizer
from components.models import resnet
from components.models.common import bind_images
from components.models.contract import Report

PAPER = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision (arXiv:2103.00020)"
PRIMARY_METRIC, PRIMARY_MODE = "zero_shot_accuracy", "max"  # test digits, prompt templates never seen in training
SELECT_BY = (("zero_shot_accuracy", "max"), ("loss", "min"))
VAL_METRIC, VAL_MODE = "val_zero_shot_accuracy", "max"
MAX_LOGIT_SCALE = 100.0
EVAL_FIELDS = ("jpg;jpeg;png;webp;npy", "tokens.npy", "cls", "caption.txt")  # the image, encoded as the data has it


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


def _encoder(width: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class VisionTransformer(nn.Module):
    """Images (B, C, H, W) -> (B, embed_dim): patches, a class token, pre-norm blocks, projection."""

    def __init__(self, cfg: Config):
        super().__init__()
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
        self.cls = nn.Parameter(torch.randn(cfg.width) * cfg.width ** -0.5)
        self.pos = nn.Parameter(torch.randn(n + 1, cfg.width) * 0.02)
        self.ln_pre, self.ln_post = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.blocks = _encoder(cfg.width, cfg.heads, cfg.image_layers, cfg.dropout)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)  # (B, patches, width)
        h = torch.cat([self.cls.expand(len(h), 1, -1), h], 1) + self.pos
        h = self.blocks(self.ln_pre(h))
        return self.proj(self.ln_post(h[:, 0]))


class TextTransformer(nn.Module):
    """Token ids (B, L), ``<eos>``-terminated and zero-padded -> (B, embed_dim), pooled at ``<eos>``."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.01)
        self.blocks = _encoder(cfg.width, cfg.heads, cfg.text_layers, cfg.dropout)
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
            self.visual = VisionTransformer(cfg)
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
    bind_images(cfg, stats, "clip")
    tok = Tokenizer.load(Path(data_dir) / assets["tokenizer"])
    return replace(cfg, vocab_size=len(tok), max_len=stats["max_len"], tokenizer=tok.to_dict(),
                   class_names=list(stats.get("class_names", [])),
                   zero_shot_templates=list(stats.get("zero_shot_templates", [])))


# ---------------------------------------------------------------------------- the loss, across workers

class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        size = torch.tensor([len(x)], device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        longest = max(sizes)  # ranks may hold a sample more or less: pad to gather, then cut
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank, ctx.longest = sizes, rank, longest
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        padded = grad.new_zeros((len(ctx.sizes), ctx.longest, *grad.shape[1:]))
        for r, (start, size) in enumerate(zip(np.cumsum([0, *ctx.sizes[:-1]]), ctx.sizes)):
            padded[r, :size] = grad[start:start + size]
        dist.all_reduce(padded)
        return padded[ctx.rank, :ctx.sizes[ctx.rank]]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every worker's rows (this one's with gradients); ``x`` itself outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over matched rows of normalised embeddings; returns (loss, logits image→text)."""
    logits = scale * image @ text.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2, logits


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
def eval_step(model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
    tokens = batch[1].long()
    image, text, scale = model(batch[0], tokens[:, 0] if tokens.dim() == 3 else tokens)
    loss, logits = contrastive_loss(image, text, scale)
    n = len(logits)
    correct = (logits.argmax(1) == torch.arange(n, device=logits.device)).sum()
    return {"loss": loss * n, "correct": correct, "count": torch.tensor(n)}


# ---------------------------------------------------------------------------- evaluation

def _tokens(model: CLIP, texts: list[str]) -> torch.Tensor:
    from components.data.captions import encode

    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; build it from a config bound to the data (train saves one)")
    return torch.from_numpy(encode(model.tokenizer, texts, model.cfg.max_len)).long()


@torch.no_grad()
def class_embeddings(model: CLIP, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """(classes, d): per class, the normalised mean of its prompts' normalised text embeddings
    (the prompt ensemble of Radford et al. 2021, section 3.1.4)."""
    prompts = [t.format(digit=name) for name in class_names for t in templates]
    emb = _embed_texts(model, _tokens(model, prompts)).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


@functools.lru_cache(maxsize=4)
def _read_split(shard_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str]]:
    """A whole split's images, tokens, labels and first captions; read once per process (validate runs
    every epoch). Callers must not modify the tensors."""
    from components.data.shards import ShardDataset

    batches = list(ShardDataset(shard_dir, split, batch_size=1 << 16, fields=EVAL_FIELDS))
    images = torch.cat([b[0] for b in batches])
    tokens = torch.cat([b[1] for b in batches]).long()
    return images, tokens, torch.cat([b[2] for b in batches]).numpy(), [c for b in batches for c in b[3]]


# Evaluation embeds on the model's device (the GPU, while training on one) and hands back CPU
# float32, which the metrics (numpy, scikit-learn) read.
@torch.no_grad()
def _embed_images(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(chunk.to(device)).float().cpu() for chunk in images.split(512)])


@torch.no_grad()
def _embed_texts(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model.encode_text(tokens.to(device)).float().cpu()


def zero_shot(model: CLIP, image_emb: torch.Tensor, cfg: Config) -> np.ndarray:
    """Class probabilities of each image against the class prompts (softmax of scaled cosines)."""
    classes = class_embeddings(model, cfg.class_names, cfg.zero_shot_templates)
    return torch.softmax(model.scale().cpu() * image_emb @ classes.T, 1).numpy()


def recall_at(similarity: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    """Fraction of queries (rows) with a relevant item among their top k; ``relevant`` (Q, N) bool."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    return {k: float(hits[:, :k].any(1).mean()) for k in ks}


@torch.no_grad()
def validate(model: CLIP, cfg: Config, data_dir) -> dict[str, float]:
    """Zero-shot accuracy on val (the held-out templates) and the InfoNCE of the whole val split."""
    model.eval()
    images, tokens, labels, _ = _read_split(str(data_dir), "val")
    image = _embed_images(model, images)
    loss, _ = contrastive_loss(image, _embed_texts(model, tokens[:, 0]), model.scale().cpu())
    out = {"loss": float(loss), "logit_scale": float(model.scale())}
    if cfg.class_names and cfg.zero_shot_templates and (labels >= 0).all():
        out["zero_shot_accuracy"] = float((zero_shot(model, image, cfg).argmax(1) == labels).mean())
    return out


@torch.no_grad()
def evaluate(model: CLIP, cfg: Config, shard_dir, split: str, detail: bool = True) -> dict:
    """Zero-shot accuracy (unseen templates), image↔text recall@1/5/10, a linear probe on frozen
    image embeddings (fitted on train), the InfoNCE and the learned temperature."""
    from sklearn.linear_model import LogisticRegression

    from components.evaluation.classification import classification_report

    model.eval()
    images, tokens, labels, captions = _read_split(str(shard_dir), split)
    image = _embed_images(model, images)
    text = _embed_texts(model, tokens[:, 0])
    loss, _ = contrastive_loss(image, text, model.scale().cpu())
    result: dict[str, Any] = {"loss": float(loss), "logit_scale": float(model.scale()),
                              "temperature": 1 / float(model.scale()), "num_samples": len(labels)}
    # Many images share a caption ("a bold seven"): a retrieved item counts when its caption is the query's.
    same = np.array(captions)[:, None] == np.array(captions)[None, :]
    sim = (image @ text.T).numpy()
    for k, v in recall_at(sim, same).items():
        result[f"image_to_text_r{k}"] = v
    for k, v in recall_at(sim.T, same).items():
        result[f"text_to_image_r{k}"] = v
    result["unique_captions"] = int(len(set(captions)))
    if cfg.class_names and cfg.zero_shot_templates and (labels >= 0).all():
        report = classification_report(zero_shot(model, image, cfg), labels)
        result.update({f"zero_shot_{k}" if k in ("accuracy", "macro_f1", "nll", "ece", "min_class_accuracy") else k: v
                       for k, v in report.items()})
        train_images, _, train_labels, _ = _read_split(str(shard_dir), "train")
        probe = LogisticRegression(max_iter=2000, C=1.0).fit(_embed_images(model, train_images).numpy(), train_labels)
        result["linear_probe_accuracy"] = float((probe.predict(image.numpy()) == labels).mean())
        result["labels"] = labels
    result.update(embeddings=image.numpy(), images=images[:16].numpy(), captions=captions[:16],
                  similarity=sim[:16, :16])
    return result


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
        out["text"] = model.encode_text(_tokens(model, texts))
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


def usage(name: str) -> str:
    return (f'`model = mlflow.pyfunc.load_model("models:/{name}@champion")`; `model.predict(pd.DataFrame({{"image": '
            f'rows, "text": captions}}))` scores each image–caption pair (scaled cosine); `params={{"mode": '
            f'"embed_image"}}` or `"embed_text"` returns normalised embeddings (N, 64). Images are rows of 64 pixel '
            f'values in [0, 1], like sklearn\'s digits.data / 16.')
