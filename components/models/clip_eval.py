"""CLIP's evaluation (``components/models/clip.py``): zero-shot classification with a prompt
ensemble over templates never seen in training, image↔text retrieval recall@k, a linear probe on
frozen image embeddings, and the InfoNCE of a whole split.

It reads any image-text model with ``encode_image``, ``encode_text``, a logit ``scale``, a
``tokenizer`` and ``cfg.max_len``, and a config with ``class_names`` and ``zero_shot_templates``.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.models.clip_loss import contrastive_loss


class ZeroShot(Protocol):
    """What zero-shot classification reads of a config."""
    class_names: list[str]
    zero_shot_templates: list[str]

EVAL_FIELDS = ("jpg;jpeg;png;webp;npy", "tokens.npy", "cls", "caption.txt")  # the image, encoded as the data has it


def tokens_of(model: nn.Module, texts: list[str]) -> torch.Tensor:
    from components.data.captions import encode

    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; build it from a config bound to the data (train saves one)")
    return torch.from_numpy(encode(model.tokenizer, texts, model.cfg.max_len)).long()


@torch.no_grad()
def class_embeddings(model: nn.Module, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """(classes, d): per class, the normalised mean of its prompts' normalised text embeddings
    (the prompt ensemble of Radford et al. 2021, section 3.1.4)."""
    prompts = [t.format(digit=name) for name in class_names for t in templates]
    emb = _embed_texts(model, tokens_of(model, prompts)).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


@functools.lru_cache(maxsize=4)
def _read_split(shard_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str]]:
    """A whole split's images, tokens, labels and first captions; read once per process (validate runs
    every epoch). Callers must not modify the tensors."""
    from components.data.registry import open_split

    batches = list(open_split(shard_dir, split, batch_size=1 << 16, fields=EVAL_FIELDS))
    images = torch.cat([b[0] for b in batches])
    tokens = torch.cat([b[1] for b in batches]).long()
    return images, tokens, torch.cat([b[2] for b in batches]).numpy(), [c for b in batches for c in b[3]]


# Evaluation embeds on the model's device (the GPU, while training on one) and hands back CPU
# float32, which the metrics (numpy, scikit-learn) read.
@torch.no_grad()
def _embed_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(chunk.to(device)).float().cpu() for chunk in images.split(512)])


@torch.no_grad()
def _embed_texts(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model.encode_text(tokens.to(device)).float().cpu()


def zero_shot(model: nn.Module, image_emb: torch.Tensor, cfg: ZeroShot) -> np.ndarray:
    """Class probabilities of each image against the class prompts (softmax of scaled cosines)."""
    classes = class_embeddings(model, cfg.class_names, cfg.zero_shot_templates)
    return torch.softmax(model.scale().cpu() * image_emb @ classes.T, 1).numpy()


def recall_at(similarity: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    """Fraction of queries (rows) with a relevant item among their top k; ``relevant`` (Q, N) bool."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    return {k: float(hits[:, :k].any(1).mean()) for k in ks}


@torch.no_grad()
def validate(model: nn.Module, cfg: ZeroShot, data_dir) -> dict[str, float]:
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
def evaluate(model: nn.Module, cfg: ZeroShot, shard_dir, split: str, detail: bool = True) -> dict:
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
