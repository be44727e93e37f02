"""Image–caption pairs for contrastive pre-training: captioned digits, or a user's jpg+txt shards.

``source: digits`` (the embedded default) pairs scikit-learn's 8x8 digits with captions
written at preprocess time. Each caption names the digit and some of three attributes
measured on the image itself, so a caption carries more than the label:

- ink: mean intensity, in train-split terciles -> ``thin`` / (none) / ``bold``;
- slant: the shear of the ink's second moments, mu11 / mu02 (image y grows downwards, so
  a negative value leans right) -> ``right-leaning`` / ``upright`` / ``left-leaning``;
- width: columns holding ink -> ``narrow`` / (none) / ``wide``.

"a bold, right-leaning seven", "the digit four, thin and wide". Every image gets
``captions_per_image`` captions from ``TRAIN_TEMPLATES`` with a random subset of its
attributes; training draws one of them per step. ``ZERO_SHOT_TEMPLATES`` are never used in
training: evaluate classifies test digits zero-shot with them.

``source: webdataset`` reads the common image–caption layout: ``{train,val,test}-*.tar``
under ``path`` whose samples hold an image (``jpg``, ``jpeg`` or ``png``), its caption
(``txt``) and optionally a class (``cls``); images are resized to ``image_size`` with
``channels`` channels.

Shards: ``input.npy`` (C, H, W) float in [0, 1], ``tokens.npy`` (K, max_len) int
(``<bos>`` caption ``<eos>``, zero-padded), ``target.cls`` (-1 without labels) and
``caption.txt`` (the first caption). The BPE tokenizer is fitted on the train captions
only and written beside the shards (``tokenizer.json``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from components.config import ConfigError, bounds
from components.data.manifest import DataError, write_manifest
from components.data.shards import write_shards
from components.data.splits import SPLITS, stratified_split
from components.data.tokenizer import BOS, EOS, Tokenizer, normalize

TOKENIZER = "tokenizer.json"
DIGITS_PIXEL_MAX = 16.0  # sklearn's digits are counts 0..16 of a 4x4 block
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = (
    "a {attrs} {digit}",
    "a handwritten {attrs} {digit}",
    "the digit {digit}, {attrs}",
    "a {attrs} {digit} written by hand",
    "a photo of a {attrs} {digit}",
    "{digit}",
    "the number {digit} drawn {attrs}",
    "a small grey {attrs} {digit}",
)
# Never used in training: zero-shot classification averages their text embeddings per class.
ZERO_SHOT_TEMPLATES = (
    "an image of the digit {digit}",
    "a picture showing a {digit}",
    "this is a {digit}",
    "a scan of a {digit}",
)
ATTRIBUTES = {"ink": ("thin", "", "bold"), "slant": ("right-leaning", "upright", "left-leaning"),
              "width": ("narrow", "", "wide")}


@dataclass
class Config:
    """``data.<name>`` of type captions."""
    source: Literal["digits", "webdataset"] = "digits"
    path: str = ""  # webdataset: the folder with {train,val,test}-*.tar
    seed: int = 0
    val_fraction: float = field(default=0.15, metadata=bounds(gt=0, lt=0.5))
    test_fraction: float = field(default=0.15, metadata=bounds(gt=0, lt=0.5))
    captions_per_image: int = field(default=4, metadata=bounds(ge=1))
    vocab_size: int = field(default=200, metadata=bounds(ge=8))
    max_len: int = field(default=16, metadata=bounds(ge=4))  # tokens with <bos> and <eos>; longer captions are cut
    image_size: int = field(default=8, metadata=bounds(ge=4))  # webdataset images are resized to it
    channels: int = field(default=1, metadata=bounds(ge=1, le=3))
    samples_per_shard: int = field(default=128, metadata=bounds(ge=1))

    def validate(self) -> None:
        if self.source == "webdataset" and not self.path:
            raise ConfigError("path: source webdataset needs the folder with {train,val,test}-*.tar")
        if self.channels == 2:
            raise ConfigError("channels: 1 (grey) or 3 (RGB), got 2")


# ---------------------------------------------------------------------------- attributes and captions

def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image (N, 1, H, W) in [0, 1]: ink (mean), slant (mu11 / mu02), width (inked columns)."""
    x = images[:, 0].astype(np.float64)
    n, h, w = x.shape
    ys, xs = np.mgrid[0:h, 0:w]
    mass = x.sum((1, 2)) + 1e-9
    cy, cx = (x * ys).sum((1, 2)) / mass, (x * xs).sum((1, 2)) / mass
    dy, dx = ys[None] - cy[:, None, None], xs[None] - cx[:, None, None]
    mu11, mu02 = (x * dx * dy).sum((1, 2)) / mass, (x * dy * dy).sum((1, 2)) / mass
    return {"ink": x.mean((1, 2)), "slant": mu11 / (mu02 + 1e-9), "width": (x.max(1) > 0.25).sum(1).astype(np.float64)}


def attribute_words(values: dict[str, np.ndarray], thresholds: dict[str, list[float]]) -> list[list[str]]:
    """Each image's attribute words (empty strings dropped), by the train-split terciles."""
    words = [[] for _ in range(len(values["ink"]))]
    for name, options in ATTRIBUTES.items():
        bins = np.digitize(values[name], thresholds[name])
        for i, b in enumerate(bins):
            if options[b]:
                words[i].append(options[b])
    return words


def caption(template: str, digit: int, attrs: list[str]) -> str:
    text = template.format(digit=DIGIT_WORDS[digit], attrs=", ".join(attrs) if "," not in template else
                           " and ".join(attrs))
    text = re.sub(r"\ba (?=[aeiou])(?!one\b)", "an ", normalize(text.replace(" ,", ",")))  # "an eight", "a one"
    return text.strip(", ")


def write_captions(labels: np.ndarray, attrs: list[list[str]], k: int, rng: np.random.Generator) -> list[list[str]]:
    """``k`` captions per image: a training template and a random subset of the image's attributes."""
    out = []
    for label, words in zip(labels, attrs):
        caps = []
        for _ in range(k):
            template = TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))]
            chosen = [w for w in words if rng.random() < 0.6]
            caps.append(caption(template, int(label), chosen))
        out.append(caps)
    return out


def encode(tok: Tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    """(len(texts), max_len) ids: <bos> text <eos>, cut to fit (keeping <eos>), zero-padded."""
    out = np.zeros((len(texts), max_len), dtype=np.int32)
    for i, t in enumerate(texts):
        ids = [BOS, *tok.encode(t)[:max_len - 2], EOS]
        out[i, :len(ids)] = ids
    return out


# ---------------------------------------------------------------------------- sources

def _decode_image(raw: bytes, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(raw)).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def read_webdataset(cfg: Config) -> dict[str, tuple[np.ndarray, list[str], np.ndarray]]:
    """``{split: (images, captions, labels)}`` from jpg/png + txt (+ cls) tar shards."""
    import tarfile

    import webdataset as wds

    root = Path(cfg.path).expanduser()
    out = {}
    for split in SPLITS:
        tars = sorted(root.glob(f"{split}-*.tar"))
        if not tars:
            raise DataError(f"{root}: no {split}-*.tar shards; expected WebDataset tars of jpg (or png) + txt "
                            f"samples named {{train,val,test}}-000000.tar")
        images, caps, labels = [], [], []
        for tar in tars:
            try:
                with open(tar, "rb") as stream:
                    files = ({**f, "__url__": str(tar)} for f in wds.tariterators.tar_file_iterator(stream))
                    for s in wds.tariterators.group_by_keys(files):
                        key = next((k for k in ("jpg", "jpeg", "png") if k in s), None)
                        if key is None or "txt" not in s:
                            raise DataError(f"{tar}: sample {s.get('__key__')!r} has {sorted(k for k in s if not k.startswith('__'))}; "
                                            f"each needs an image (jpg/jpeg/png) and a caption (txt)")
                        images.append(_decode_image(s[key], cfg.image_size, cfg.channels))
                        caps.append(normalize(s["txt"].decode("utf-8")))
                        labels.append(int(s["cls"]) if "cls" in s else -1)
            except (tarfile.TarError, OSError) as exc:
                raise DataError(f"{tar}: cannot read ({type(exc).__name__}: {exc})") from None
        out[split] = (np.stack(images), caps, np.array(labels, dtype=np.int64))
    return out


# ---------------------------------------------------------------------------- ingest / preprocess

def ingest(cfg: Config, out_dir: Path) -> dict:
    """Images, captions (webdataset) and labels per split, with a checksum manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = (bunch.images.astype(np.float32) / DIGITS_PIXEL_MAX)[:, None]
        labels = bunch.target.astype(np.int64)
        idx = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        splits = {k: (images[v], [], labels[v]) for k, v in idx.items()}
    else:
        splits = read_webdataset(cfg)
    for k, (images, caps, labels) in splits.items():
        np.savez(out_dir / f"{k}.npz", images=images, labels=labels, captions=np.array(caps, dtype=str))
    labelled = all((v[2] >= 0).all() for v in splits.values())
    return write_manifest(out_dir, {
        "dataset": "captions", "source": cfg.source, "num_samples": sum(len(v[2]) for v in splits.values()),
        "num_classes": int(max(v[2].max() for v in splits.values()) + 1) if labelled else 0,
        "split_sizes": {k: int(len(v[2])) for k, v in splits.items()}})


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Write captions (digits), fit the tokenizer on train captions, shard every split."""
    raw = {}
    for k in SPLITS:
        with np.load(raw_dir / f"{k}.npz") as f:
            raw[k] = (f["images"], [str(c) for c in f["captions"]], f["labels"])
    meta: dict = {}
    if cfg.source == "digits":
        train_values = measure(raw["train"][0])
        thresholds = {n: np.quantile(v, [1 / 3, 2 / 3]).tolist() for n, v in train_values.items()}
        rng = np.random.default_rng(cfg.seed)
        captions = {k: write_captions(raw[k][2], attribute_words(measure(raw[k][0]), thresholds),
                                      cfg.captions_per_image, rng) for k in SPLITS}
        meta.update(attribute_thresholds=thresholds, class_names=list(DIGIT_WORDS), train_templates=list(TRAIN_TEMPLATES),
                    zero_shot_templates=list(ZERO_SHOT_TEMPLATES))
    else:
        captions = {k: [[c] for c in raw[k][1]] for k in SPLITS}
        if manifest["num_classes"]:
            meta.update(class_names=[str(c) for c in range(manifest["num_classes"])],
                        zero_shot_templates=["a photo of a {digit}"])
    tok = Tokenizer.fit([c for caps in captions["train"] for c in caps], cfg.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir / TOKENIZER)
    columns = {}
    for k in SPLITS:
        images, _, labels = raw[k]
        tokens = [encode(tok, caps, cfg.max_len) for caps in captions[k]]
        columns[k] = {"input.npy": images.astype(np.float32), "tokens.npy": tokens, "target.cls": labels,
                      "caption.txt": [caps[0] for caps in captions[k]]}
    return write_shards(out_dir, columns, cfg.samples_per_shard, fields=("input.npy", "tokens.npy"), meta={
        "dataset": "captions", "source": cfg.source, "num_classes": manifest["num_classes"],
        "input_shape": list(raw["train"][0].shape[1:]), "vocab_size": len(tok), "max_len": cfg.max_len,
        "captions_per_image": cfg.captions_per_image, "assets": {"tokenizer": TOKENIZER}, **meta,
        "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}})
