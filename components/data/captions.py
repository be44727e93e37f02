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
under ``path`` whose samples hold an image (``jpg``, ``jpeg``, ``png`` or ``webp``), its
caption (``txt``) and optionally a class (``cls``). Ingest lists the samples (and hashes the
tars); preprocess streams the tars again, passing each image's bytes through.

Shards, as the images datasets' (components/data/images.py): the image encoded (raw uint8
``npy`` for the digits, the source's own bytes otherwise), decoded and augmented in the loader
workers (``augment``; images are brought to ``image_size`` x ``image_size`` with ``channels``
channels), ``tokens.npy`` (K, max_len) int (``<bos>`` caption ``<eos>``, zero-padded),
``cls`` (-1 without labels) and ``caption.txt`` (the first caption). The subword tokenizer
(``tokenizer``: bpe or unigram) is fitted on the train captions only and written beside the shards (``tokenizer.json``).
Augmentation never flips by default: captions say "left-leaning" and "right-leaning".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from components.config import ConfigError, bounds
from components.data import images
from components.data.manifest import DataError, write_manifest
from components.data.shards import IMAGE_EXTENSIONS, BatchOptions
from components.data.splits import SPLITS, stratified_split
from components.data.tokenizer import BOS, EOS, Tokenizer, normalize
from components.data.writer import SplitWriter, write_shards, write_stats

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
    tokenizer: Literal["bpe", "unigram"] = "bpe"  # the subword model, fitted on the train captions
    max_len: int = field(default=16, metadata=bounds(ge=4))  # tokens with <bos> and <eos>; longer captions are cut
    image_size: int = field(default=8, metadata=bounds(ge=4))  # what the loader hands the model: S x S
    channels: int = field(default=1, metadata=bounds(ge=1, le=3))
    on_channel_mismatch: Literal["convert", "error"] = "convert"  # webdataset: an image of another band count
    samples_per_shard: int = field(default=128, metadata=bounds(ge=1))
    augment: images.AugmentConfig = field(default_factory=lambda: images.AugmentConfig(flip=False))

    def validate(self) -> None:
        if self.source == "webdataset" and not self.path:
            raise ConfigError("path: source webdataset needs the folder with {train,val,test}-*.tar")
        if self.channels == 2:
            raise ConfigError("channels: 1 (grey) or 3 (RGB), got 2")
        if self.source == "digits" and self.channels != 1:
            raise ConfigError("channels: the digits are grey, 1 channel")
        if self.augment.size not in (0, self.image_size):
            raise ConfigError(f"augment.size: set image_size instead ({self.image_size} now)")


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
    for i, encoded in enumerate(tok.encode_batch(texts)):
        ids = [BOS, *encoded[:max_len - 2], EOS]
        out[i, :len(ids)] = ids
    return out


# ---------------------------------------------------------------------------- sources

LISTING = "listing.jsonl"


def list_webdataset(cfg: Config) -> tuple[list[dict], dict[str, str]]:
    """One row per sample (split, tar, key, image extension, caption, class) and each tar's sha256."""
    root = Path(cfg.path).expanduser()
    rows, digests = [], {}
    for split in SPLITS:
        tars = sorted(root.glob(f"{split}-*.tar"))
        if not tars:
            raise DataError(f"{root}: no {split}-*.tar shards; expected WebDataset tars of jpg (or png) + txt "
                            f"samples named {{train,val,test}}-000000.tar")
        for tar in tars:
            for s in images.iter_tar_samples(tar):
                if "__sha256__" in s:
                    digests[tar.name] = s["__sha256__"]
                    continue
                ext = next((k for k in IMAGE_EXTENSIONS if k in s), None)
                if ext is None or "txt" not in s:
                    raise DataError(f"{tar}: sample {s.get('__key__')!r} has "
                                    f"{sorted(k for k in s if not k.startswith('__'))}; each needs an image "
                                    f"(jpg/jpeg/png/webp) and a caption (txt)")
                images.check_image_header(s[ext], f"{tar}: sample {s['__key__']!r}", cfg.channels,
                                          cfg.on_channel_mismatch)
                rows.append({"split": split, "tar": tar.name, "key": s["__key__"], "ext": ext,
                             "caption": normalize(s["txt"].decode("utf-8")),
                             "label": int(s["cls"]) if "cls" in s else -1})
    return rows, digests


# ---------------------------------------------------------------------------- ingest / preprocess

def ingest(cfg: Config, out_dir: Path) -> dict:
    """Digits: the images (grey levels 0..16) and labels per split. Webdataset: the list of
    samples with their captions, and each tar's sha256. With a checksum manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict = {"dataset": "captions", "source": cfg.source}
    if cfg.source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels = bunch.images.astype(np.uint8)[:, None]
        labels = bunch.target.astype(np.int64)
        idx = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        for k, v in idx.items():
            np.savez(out_dir / f"{k}.npz", images=pixels[v], labels=labels[v])
        sizes = {k: int(len(v)) for k, v in idx.items()}
        all_labels = labels
        meta.update(pixel_max=DIGITS_PIXEL_MAX, format="sklearn.datasets.load_digits", source_size=list(pixels.shape[2:]))
    else:
        rows, digests = list_webdataset(cfg)
        (out_dir / LISTING).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sizes = {k: sum(r["split"] == k for r in rows) for k in SPLITS}
        all_labels = np.array([r["label"] for r in rows])
        meta.update(pixel_max=255, format="webdataset tars", path=str(Path(cfg.path).expanduser()),
                    source_sha256=digests)
    labelled = bool((all_labels >= 0).all())
    return write_manifest(out_dir, {
        **meta, "num_samples": int(sum(sizes.values())),
        "num_classes": int(all_labels.max() + 1) if labelled else 0, "split_sizes": sizes})


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Write captions (digits), fit the tokenizer on train captions, shard every split."""
    meta: dict = {}
    if cfg.source == "digits":
        raw = {}
        for k in SPLITS:
            with np.load(raw_dir / f"{k}.npz") as f:
                raw[k] = (f["images"], f["labels"])
        scaled = {k: raw[k][0].astype(np.float32) / DIGITS_PIXEL_MAX for k in SPLITS}
        train_values = measure(scaled["train"])
        thresholds = {n: np.quantile(v, [1 / 3, 2 / 3]).tolist() for n, v in train_values.items()}
        rng = np.random.default_rng(cfg.seed)
        captions = {k: write_captions(raw[k][1], attribute_words(measure(scaled[k]), thresholds),
                                      cfg.captions_per_image, rng) for k in SPLITS}
        meta.update(attribute_thresholds=thresholds, class_names=list(DIGIT_WORDS), train_templates=list(TRAIN_TEMPLATES),
                    zero_shot_templates=list(ZERO_SHOT_TEMPLATES))
    else:
        rows = [json.loads(line) for line in (raw_dir / LISTING).read_text().splitlines() if line]
        captions = {k: [[r["caption"]] for r in rows if r["split"] == k] for k in SPLITS}
        if manifest["num_classes"]:
            meta.update(class_names=[str(c) for c in range(manifest["num_classes"])],
                        zero_shot_templates=["a photo of a {digit}"])
    tok = Tokenizer.fit([c for caps in captions["train"] for c in caps], cfg.vocab_size, model=cfg.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir / TOKENIZER)
    tokens = {k: [encode(tok, caps, cfg.max_len) for caps in captions[k]] for k in SPLITS}
    image = images.image_meta(cfg.augment, cfg.source, manifest, cfg.channels, size=cfg.image_size, flip=False)
    meta = {"dataset": "captions", "source": cfg.source, "format": manifest["format"],
            "path": manifest.get("path", ""), "source_sha256": manifest.get("source_sha256", {}),
            "num_classes": manifest["num_classes"], "image": image,
            "input_shape": [cfg.channels, cfg.image_size, cfg.image_size], "vocab_size": len(tok),
            "max_len": cfg.max_len, "captions_per_image": cfg.captions_per_image,
            "assets": {"tokenizer": TOKENIZER}, **meta,
            "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}}
    fields = (images.IMAGE_FIELD, "tokens.npy")
    if cfg.source == "digits":
        columns = {k: {"npy": list(raw[k][0]), "tokens.npy": tokens[k], "cls": raw[k][1],
                       "caption.txt": [caps[0] for caps in captions[k]]} for k in SPLITS}
        return write_shards(out_dir, columns, cfg.samples_per_shard, fields=fields, meta=meta, compress=True,
                            compresslevel=6)
    # Webdataset: the tars streamed once more, each image's bytes passed through to its split's shards.
    root = Path(manifest["path"])
    position = {(r["tar"], r["key"]): (r["split"], i) for i, r in
                enumerate(sorted(rows, key=lambda r: SPLITS.index(r["split"])))}
    start = {k: sum(1 for r in rows if SPLITS.index(r["split"]) < SPLITS.index(k)) for k in SPLITS}
    writers = {k: SplitWriter(out_dir, k, len(captions[k]), cfg.samples_per_shard, compress=True, compresslevel=6)
               for k in SPLITS}
    for tar, digest in manifest["source_sha256"].items():
        for s in images.iter_tar_samples(root / tar):
            if "__sha256__" in s:
                if s["__sha256__"] != digest:
                    raise DataError(f"{root / tar}: changed since ingest (sha256 differs); re-run `dvc repro` "
                                    f"from ingest")
                continue
            split, i = position[(tar, s["__key__"])]
            j = i - start[split]
            ext = next(k for k in IMAGE_EXTENSIONS if k in s)
            writers[split].write({"__key__": f"{split}{j:07d}", ext: s[ext], "tokens.npy": tokens[split][j],
                                  "cls": int(s["cls"]) if "cls" in s else -1,
                                  "caption.txt": captions[split][j][0]})
    return write_stats(out_dir, {k: w.close() for k, w in writers.items()}, meta, fields)


def batcher(stats: dict, shard_dir: Path, options: BatchOptions):
    """How the reader batches these shards: the image as the images module does, the caption's tokens padded."""
    return images.batcher(stats, shard_dir, options)
