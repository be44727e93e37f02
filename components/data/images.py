"""Labelled images from any of the usual sources, as encoded WebDataset shards.

``data.<name>`` with ``type: images`` and ``source:``

- ``digits``: scikit-learn's 8x8 digits (1,797 images, grey levels 0..16), the embedded default;
- ``cifar10`` / ``cifar100``: the python-pickle batches as distributed (``cifar-10-batches-py/``
  with ``data_batch_1..5`` and ``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``,
  fine labels); ``path`` is that folder or the one holding it;
- ``mnist`` / ``fashion_mnist``: the four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-...``), gzipped or not, in ``path`` or ``path/raw``;
- ``imagefolder``: ``path/<class>/*.{jpg,jpeg,png,webp}`` (torchvision's layout), or
  ``path/{train,val,test}/<class>/...``: the split folders present are used as they are;
- ``webdataset``: ``path/{train,val,test}-*.tar`` whose samples hold an image
  (``jpg``/``jpeg``/``png``/``webp``) and a ``cls`` (the common ImageNet layout).

A split the source lacks is cut from train, stratified by class and fixed by ``seed``
(CIFAR and MNIST have no validation split; ``test_fraction`` applies only to a source without
a test split). Nothing downloads: a missing or malformed file is a DataError naming the path,
the layout expected and where the data comes from.

Ingest records what was found: pixel-array sources (digits, CIFAR, MNIST) become one uint8
array file; image files and shards stay where they are and ingest lists them (split, class,
file or tar and key) with every file's sha256, which preprocess checks as it reads them.

Shards carry encoded images: a JPEG/PNG/WebP's bytes pass through unchanged (never
re-encoded); pixel arrays are stored as raw uint8 ``npy`` (C, H, W) in gzipped tars, which
decode faster than PNG at about the same size (``benchmarks/bench_data.py`` prints both).
Decoding, augmentation (``augment``: CIFAR or ImageNet style, components/data/transforms.py)
and scaling to [0, 1] run in the loader workers. Preprocess also writes the per-channel mean
and std of the train split, the source, its format and the sha256 of what was ingested into
``stats.json``, and fits the generative evaluator's feature network on train
(``components/data/features.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from components.config import ConfigError, bounds
from components.data import features, transforms
from components.data.manifest import DataError, sha256, write_manifest
from components.data.shards import IMAGE_EXTENSIONS, BatchOptions, _HashingReader
from components.data.splits import SPLITS, stratified_split
from components.data.writer import STATS, SplitWriter, write_shards

IMAGE_FIELD = "jpg;jpeg;png;webp;npy"  # one of these per sample (webdataset's alternatives syntax)
FIELDS = (IMAGE_FIELD, "cls")
ARRAY_SOURCES = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist")
NO_FLIP = ("digits", "mnist")  # a mirrored digit is another symbol
LISTING = "listing.tsv"
ARRAYS = "images.npz"
TAR_OVERHEAD = 1536  # bytes of tar headers and padding per sample of two members, on average


@dataclass
class AugmentConfig:
    """``data.<name>.augment``: how the loader decodes, crops and flips (transforms.py)."""
    style: Literal["cifar", "imagenet", "none"] = "cifar"
    size: int = field(default=0, metadata=bounds(ge=0))  # output S x S; 0 = the source's own (arrays) / 224 (imagenet)
    pad: int = field(default=-1, metadata=bounds(ge=-1))  # cifar: zero padding before the crop; -1 = size // 8
    flip: bool | None = None  # horizontal flips in training; None = yes, except for digits and MNIST
    min_scale: float = field(default=0.08, metadata=bounds(gt=0, le=1))  # imagenet: smallest crop area
    crop_ratio: float = field(default=0.875, metadata=bounds(gt=0, le=1))  # imagenet eval: 224 of 256


@dataclass
class Config:
    """``data.<name>`` of type images."""
    source: Literal["digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "webdataset"] = "digits"
    path: str = ""  # every source but digits: where the files are
    seed: int = 0
    val_fraction: float = field(default=0.15, metadata=bounds(gt=0, lt=0.5))
    test_fraction: float = field(default=0.15, metadata=bounds(gt=0, lt=0.5))
    channels: int = field(default=3, metadata=bounds(ge=1, le=3))  # image files: 1 (grey) or 3 (RGB)
    on_channel_mismatch: Literal["convert", "error"] = "convert"  # an image file of another band count
    samples_per_shard: int = field(default=128, metadata=bounds(ge=1))
    compress: Literal["auto", "always", "never"] = "auto"  # gzip tars when headers would be > 2% of the bytes
    stats_samples: int = field(default=10_000, metadata=bounds(ge=1))  # image files: train images for mean/std
    fit_evaluator: bool = True  # the feature network of FID/KID (generative families need it)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    evaluator: features.FeatureConfig = field(default_factory=features.FeatureConfig)

    def validate(self) -> None:
        if self.source != "digits" and not self.path:
            raise ConfigError(f"path: source {self.source} needs the folder that holds its files")
        if self.channels == 2:
            raise ConfigError("channels: 1 (grey) or 3 (RGB), got 2")
        if self.augment.flip and self.source in NO_FLIP:
            raise ConfigError(f"augment.flip: a mirrored digit is another symbol; set it to false for {self.source}")
        if self.augment.style == "imagenet" and self.source in ARRAY_SOURCES:
            raise ConfigError(f"augment.style: imagenet crops suit photos of any size; {self.source} is one size, "
                              f"use cifar")


# ---------------------------------------------------------------------------- reading the sources

def _missing(path: Path, what: str, source: str) -> DataError:
    where = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpacked)",
             "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (unpacked)",
             "mnist": "the four files of http://yann.lecun.com/exdb/mnist/ (or torchvision's MNIST/raw)",
             "fashion_mnist": "the four files of https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
             }.get(source, "your own data")
    return DataError(f"{path}: {what}; expected the {source} layout described in components/data/images.py. "
                     f"Get it from {where} and set data.<name>.path to it; nothing downloads at run time")


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow numpy arrays and builtins only, nothing that runs code."""

    def find_class(self, module: str, name: str):
        if (module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and name in (
                "_reconstruct", "ndarray", "dtype", "scalar")) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise _missing(path, "CIFAR batch file not found", "cifar10" if label_key == b"labels" else "cifar100")
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc}); re-extract the "
                        f"archive") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: images are {data.dtype} rows of shape {data.shape[1:]}, expected uint8 rows of "
                        f"3072 values (3x32x32); the file is truncated or not a CIFAR batch")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels; the file is truncated or corrupt")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(root: Path, source: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], list[Path]]:
    """``{train, test: (images (N, 3, 32, 32) uint8, labels)}``, class names, the files read."""
    folder, train, test, key, meta, names_key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
         "batches.meta", b"label_names") if source == "cifar10" else
        ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta", b"fine_label_names"))
    if (root / folder).is_dir():
        root = root / folder
    files = [root / f for f in train + test]
    parts = {split: [_cifar_batch(root / f, key) for f in names] for split, names in (("train", train), ("test", test))}
    out = {k: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for k, v in parts.items()}
    names = [str(c) for c in range(int(max(v[1].max() for v in out.values())) + 1)]
    if (root / meta).is_file():
        with open(root / meta, "rb") as f:
            names = [n.decode() for n in _ArrayUnpickler(f, encoding="bytes").load()[names_key]]
        files.append(root / meta)
    return out, names, files


def _idx(path: Path, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimensions (magic {raw[:4].hex()})")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims}, {int(np.prod(dims))} bytes, the file holds {len(body)}; "
                        f"it is truncated")
    return np.frombuffer(body, np.uint8).reshape(dims)


def read_mnist(root: Path, source: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], list[Path]]:
    if (root / "raw").is_dir() and not any(root.glob("train-images-idx3-ubyte*")):
        root = root / "raw"
    out, files = {}, []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pair = []
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            found = [p for p in (root / f"{prefix}-{kind}-ubyte", root / f"{prefix}-{kind}-ubyte.gz") if p.is_file()]
            if not found:
                raise _missing(root / f"{prefix}-{kind}-ubyte[.gz]", "IDX file not found", source)
            pair.append(_idx(found[0], ndim))
            files.append(found[0])
        images, labels = pair
        if len(images) != len(labels):
            raise DataError(f"{root}: {prefix} has {len(images)} images but {len(labels)} labels")
        out[split] = (images[:, None], labels.astype(np.int64))
    names = (["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
              "Ankle boot"] if source == "fashion_mnist" else [str(i) for i in range(10)])
    return out, names, files


def check_image_header(raw: bytes | Path, where: str, channels: int, on_mismatch: str) -> tuple[int, str]:
    """(band count, format) of an encoded image, read from its header; DataError when unreadable
    or (``on_mismatch == "error"``) of another band count than ``channels``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw) as img:
            bands, fmt = len(img.getbands()), img.format
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {exc}); delete or replace it") from None
    colour = bands - (1 if bands in (2, 4) else 0)  # LA, RGBA: the alpha band is dropped
    if colour != channels and on_mismatch == "error":
        raise DataError(f"{where}: has {bands} bands, data.<name>.channels is {channels}; convert the file, "
                        f"or set on_channel_mismatch: convert to convert such images when they are decoded")
    return bands, fmt


def list_imagefolder(root: Path, cfg: Config) -> tuple[list[tuple[str, int, str, int, str]], list[str], dict]:
    """Rows (split, label, path relative to root, bytes, sha256), class names, counts."""
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and "train" not in present:
        raise _missing(root / "train", f"split folders {present} but no train/", "imagefolder")
    tops = {s: root / s for s in present} or {"train": root}
    classes = sorted(p.name for p in tops["train"].iterdir() if p.is_dir()) if tops["train"].is_dir() else []
    if not classes:
        raise _missing(tops["train"], "no class folders (root/<class>/*.jpg)", "imagefolder")
    rows, converted = [], 0
    for split, top in tops.items():
        for label, name in enumerate(classes):
            folder = top / name
            files = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS) \
                if folder.is_dir() else []
            if not files:
                raise DataError(f"{folder}: class folder {name!r} has no images (.jpg, .jpeg, .png, .webp); add "
                                f"some or remove the folder from every split")
            for f in files:
                bands, _ = check_image_header(f, str(f), cfg.channels, cfg.on_channel_mismatch)
                converted += bands != cfg.channels
                rows.append((split, label, str(f.relative_to(root)), f.stat().st_size, sha256(f)))
    extra = sorted({p.name for top in tops.values() for p in top.iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise DataError(f"{root}: class folders {extra} are in val/test but not in train; every class needs "
                        f"training images")
    return rows, classes, {"converted_on_decode": converted}


def iter_tar_samples(path: Path) -> Iterator[dict]:
    """A user's tar as webdataset samples (dicts of field -> bytes, with ``__key__``), read by
    webdataset's own iterator (any tar format); ends with ``{"__sha256__": digest}`` of the file."""
    import tarfile

    import webdataset as wds

    try:
        with open(path, "rb", buffering=0) as f:
            hashed = _HashingReader(f)
            stream = io.BufferedReader(hashed, 1 << 20)
            files = ({**x, "__url__": str(path)} for x in wds.tariterators.tar_file_iterator(stream))
            yield from wds.tariterators.group_by_keys(files)
            yield {"__sha256__": hashed.finish()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc}); re-create or re-download it") from None


def iter_webdataset(tar: Path) -> Iterator[tuple[str, str, bytes, int]]:
    """(key, image extension, bytes, class) of every sample of a source tar; DataError names the
    tar and the key of a sample without an image or a class. Ends with ("", "", b"", -1) and the
    tar's sha256 in the extension slot."""
    for s in iter_tar_samples(tar):
        if "__sha256__" in s:
            yield "", s["__sha256__"], b"", -1
            return
        ext = next((k for k in IMAGE_EXTENSIONS if k in s), None)
        if ext is None or "cls" not in s:
            have = sorted(k for k in s if not k.startswith("__"))
            raise DataError(f"{tar}: sample {s.get('__key__')!r} has {have}; each needs an image (jpg, jpeg, "
                            f"png or webp) and a class (cls)")
        try:
            label = int(s["cls"])
        except ValueError:
            raise DataError(f"{tar}: sample {s['__key__']!r}: cls {s['cls'][:20]!r} is not an integer") from None
        yield s["__key__"], ext, s[ext], label


def list_webdataset(root: Path, cfg: Config) -> tuple[list[tuple], dict[str, str], dict]:
    """Rows (split, label, tar, key, ext), the sha256 of every tar, counts."""
    tars = {s: sorted(root.glob(f"{s}-*.tar")) + sorted(root.glob(f"{s}-*.tar.gz")) for s in SPLITS}
    if not tars["train"]:
        raise _missing(root, "no train-*.tar shards (jpg/png + cls samples named {train,val,test}-000000.tar)",
                       "webdataset")
    rows, digests, converted = [], {}, 0
    for split, paths in tars.items():
        for tar in paths:
            for key, ext, raw, label in iter_webdataset(tar):
                if not key:
                    digests[tar.name] = ext
                    continue
                bands, _ = check_image_header(raw, f"{tar}: sample {key!r}", cfg.channels, cfg.on_channel_mismatch)
                converted += bands != cfg.channels
                rows.append((split, label, tar.name, key, ext))
    return rows, digests, {"converted_on_decode": converted}


# ---------------------------------------------------------------------------- ingest

def _cut_missing_splits(labels: np.ndarray, have: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """Index arrays of train/val/test: the source's own, and the missing ones cut from train."""
    train = have["train"]
    val_f = cfg.val_fraction if "val" not in have else 0
    test_f = cfg.test_fraction if "test" not in have else 0
    if not val_f and not test_f:
        return dict(have)
    # stratified_split always cuts both; a fraction the source does not need goes back to train.
    cut = stratified_split(labels[train], val_f or 1e-9, test_f or 1e-9, cfg.seed)
    out = dict(have)
    keep = [cut["train"]]
    for name, f in (("val", val_f), ("test", test_f)):
        if f:
            out[name] = train[cut[name]]
        else:
            keep.append(cut[name])
    out["train"] = train[np.sort(np.concatenate(keep))]
    return out


def ingest(cfg: Config, out_dir: Path) -> dict:
    """Read the source, fix the split, and write what preprocess needs with a checksum manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(cfg.path).expanduser()
    if cfg.source != "digits" and not root.exists():
        raise _missing(root, "not found", cfg.source)
    meta: dict = {"dataset": "images", "source": cfg.source, "path": str(root) if cfg.source != "digits" else ""}
    if cfg.source in ARRAY_SOURCES:
        if cfg.source == "digits":
            from sklearn.datasets import load_digits

            bunch = load_digits()
            images, labels = bunch.images.astype(np.uint8)[:, None], bunch.target.astype(np.int64)
            split = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
            names, files, fmt, pixel_max = [str(i) for i in range(10)], [], "sklearn.datasets.load_digits", 16
        else:
            reader, fmt = ((read_cifar, "cifar python batches") if cfg.source.startswith("cifar")
                           else (read_mnist, "IDX"))
            parts, names, files = reader(root, cfg.source)
            images = np.concatenate([parts["train"][0], parts["test"][0]])
            labels = np.concatenate([parts["train"][1], parts["test"][1]])
            n_train = len(parts["train"][1])
            split = _cut_missing_splits(labels, {"train": np.arange(n_train),
                                                 "test": np.arange(n_train, len(labels))}, cfg)
            pixel_max = 255
        np.savez(out_dir / ARRAYS, images=images, labels=labels)
        meta.update(format=fmt, pixel_max=pixel_max, source_size=list(images.shape[2:]), channels=images.shape[1])
        counts: dict = {}
    else:
        if cfg.source == "imagefolder":
            rows, names, counts = list_imagefolder(root, cfg)
            files, fmt = [], "image folder"
        else:
            rows, digests, counts = list_webdataset(root, cfg)
            names = [str(c) for c in range(max(r[1] for r in rows) + 1)]
            files, fmt = [], "webdataset tars"
            meta["source_sha256"] = digests
        labels = np.array([r[1] for r in rows], dtype=np.int64)
        have = {s: np.flatnonzero([r[0] == s for r in rows]) for s in SPLITS}
        split = _cut_missing_splits(labels, {k: v for k, v in have.items() if len(v)}, cfg)
        which = np.empty(len(rows), dtype=object)
        for name, idx in split.items():
            which[idx] = name
        lines = [f"{which[i]}\t{r[1]}\t" + "\t".join(str(x) for x in r[2:]) for i, r in enumerate(rows)]
        (out_dir / LISTING).write_text("\n".join(lines) + "\n")
        if cfg.source == "imagefolder":  # one digest over every file's sha256
            meta["source_sha256"] = {"files": hashlib.sha256("".join(r[4] for r in rows).encode()).hexdigest()}
        meta.update(format=fmt, pixel_max=255, source_size=None, channels=cfg.channels, **counts)
    if files:
        meta["source_sha256"] = {str(f.relative_to(root)): sha256(f) for f in files}
    np.savez(out_dir / "split.npz", **split)
    return write_manifest(out_dir, {
        **meta, "num_samples": len(labels), "num_classes": len(names), "class_names": names,
        "split_sizes": {k: len(split[k]) for k in SPLITS}})


# ---------------------------------------------------------------------------- preprocess

def image_meta(augment: AugmentConfig, source: str, manifest: dict, channels: int, size: int = 0,
               flip: bool = True) -> dict:
    """``stats.json["image"]``: what the loader's transform needs (transforms.ImageTransform).
    ``size`` and ``flip`` are the defaults where ``augment`` leaves them open (0, None)."""
    a = augment
    source_size = manifest.get("source_size")
    size = a.size or size or (224 if a.style == "imagenet" else source_size[-1] if source_size else 0)
    if not size:
        raise ConfigError(f"augment.size: {source} images have no single size; set the S of the S x S "
                          f"images the models take (e.g. 32 in cifar style, 224 in imagenet style)")
    return {"channels": int(channels), "pixel_max": manifest["pixel_max"], "source_size": source_size,
            "augment": {"style": a.style, "size": size, "pad": a.pad if a.pad >= 0 else size // 8,
                        "flip": a.flip if a.flip is not None else flip, "min_scale": a.min_scale,
                        "crop_ratio": a.crop_ratio}}


def _subset(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    return idx if len(idx) <= n else np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def _channel_stats(images: np.ndarray, pixel_max: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1] units, from integer counts of
    each grey level: exact, and no float copy of the split (1.2 GB for CIFAR's train in float64)."""
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        levels = np.arange(len(counts)) / pixel_max
        m = (counts * levels).sum() / counts.sum()
        mean.append(float(m))
        std.append(float(np.sqrt((counts * (levels - m) ** 2).sum() / counts.sum())))
    return mean, std


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict) -> dict:
    """Encoded shards per split (``npy`` uint8 or the source's own image bytes, and ``cls``),
    ``stats.json`` with class counts, per-channel mean and std, the source and its sha256s,
    and the evaluator's feature network fitted on train."""
    image = image_meta(cfg.augment, cfg.source, manifest, manifest["channels"], flip=cfg.source not in NO_FLIP)
    with np.load(raw_dir / "split.npz") as f:
        split = {k: f[k] for k in SPLITS}
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": "images", "source": cfg.source, "format": manifest["format"], "path": manifest["path"],
            "source_sha256": manifest.get("source_sha256", {}), "num_classes": manifest["num_classes"],
            "class_names": manifest["class_names"], "image": image,
            "input_shape": [image["channels"], image["augment"]["size"], image["augment"]["size"]],
            "raw_manifest_sha256": {k: v["sha256"] for k, v in manifest["files"].items()}}
    if cfg.source in ARRAY_SOURCES:
        with np.load(raw_dir / ARRAYS) as f:
            images, labels = f["images"], f["labels"]
        mean, std = _channel_stats(images[split["train"]], image["pixel_max"])
        compress = cfg.compress != "never"  # tar headers outweigh a small image many times over
        columns = {k: {"npy": list(images[idx]), "cls": labels[idx]} for k, idx in split.items()}
        samples = {k: _subset(idx, cfg.evaluator.max_samples, cfg.seed) for k, idx in split.items()}
        decoded = {k: (images[idx], labels[idx]) for k, idx in samples.items()}
        stats = write_shards(out_dir, columns, cfg.samples_per_shard, fields=FIELDS, compress=compress,
                             compresslevel=6, meta={**meta, "encoding": "npy uint8"},
                             split_meta=_class_counts(labels, split))
    else:
        stats, decoded, mean, std = _preprocess_files(cfg, raw_dir, out_dir, manifest, image, meta, split)
    stats["mean"], stats["std"] = mean, std
    if cfg.fit_evaluator:
        resized = {k: (_to_size(x, image), y) for k, (x, y) in decoded.items()}
        stats["evaluator"] = features.fit(cfg.evaluator, {k: (x.astype(np.float32) / image["pixel_max"], y)
                                                          for k, (x, y) in resized.items()},
                                          manifest["num_classes"], out_dir / "evaluator")
    (out_dir / STATS).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats


def _to_size(x: np.ndarray, image: dict) -> np.ndarray:
    size = image["augment"]["size"]
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    import torch

    return np.stack([transforms._resize_tensor(torch.from_numpy(np.ascontiguousarray(i)), size).numpy() for i in x])


def _class_counts(labels: np.ndarray, split: dict[str, np.ndarray]) -> dict[str, dict]:
    out = {}
    for k, idx in split.items():
        classes, counts = np.unique(labels[idx], return_counts=True)
        out[k] = {"class_counts": {str(int(c)): int(n) for c, n in zip(classes, counts)}}
    return out


def _read_listing(raw_dir: Path) -> list[list[str]]:
    return [line.split("\t") for line in (raw_dir / LISTING).read_text().splitlines() if line]


def _preprocess_files(cfg: Config, raw_dir: Path, out_dir: Path, manifest: dict, image: dict, meta: dict,
                      split: dict[str, np.ndarray]) -> tuple[dict, dict, list[float], list[float]]:
    """Shards of image files or source tars, bytes passed through; decodes only the images that
    the channel statistics and the evaluator need (a seeded subset, at most ``stats_samples``)."""
    root = Path(manifest["path"])
    rows = _read_listing(raw_dir)
    labels = np.array([int(r[1]) for r in rows], dtype=np.int64)
    sizes = {k: len(v) for k, v in split.items()}
    if cfg.source == "imagefolder":
        mean_bytes = float(np.mean([int(r[3]) for r in rows]))
    else:
        mean_bytes = sum((root / t).stat().st_size for t in manifest["source_sha256"]) / max(1, len(rows))
    compress = cfg.compress == "always" or (cfg.compress == "auto" and TAR_OVERHEAD / mean_bytes > 0.02)
    writers = {k: SplitWriter(out_dir, k, sizes[k], cfg.samples_per_shard, compress, compresslevel=6) for k in SPLITS}
    n_stats = min(cfg.stats_samples, len(split["train"]))
    stats_idx = set(_subset(split["train"], n_stats, cfg.seed + 1).tolist())
    ev_idx = {k: set(_subset(idx, cfg.evaluator.max_samples, cfg.seed).tolist()) if cfg.fit_evaluator else set()
              for k, idx in split.items()}
    wanted = {k: ev_idx[k] | (stats_idx if k == "train" else set()) for k in SPLITS}
    eval_transform = transforms.ImageTransform(image, train=False)
    decoded: dict[str, dict[int, np.ndarray]] = {k: {} for k in SPLITS}

    def put(i: int, ext: str, raw: bytes, where: str) -> None:
        name = rows[i][0]
        writers[name].write({"__key__": f"{name}{len(writers[name]):08d}", ext: raw, "cls": int(rows[i][1])})
        if i in wanted[name]:
            try:
                decoded[name][i] = eval_transform.pixels(raw, random.Random(0)).numpy()
            except (OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"{where}: cannot decode the image ({type(exc).__name__}: {exc}); delete or "
                                f"replace it and re-run `dvc repro`") from None

    if cfg.source == "imagefolder":
        order = {k: np.random.default_rng([cfg.seed, j]).permutation(idx) for j, (k, idx) in enumerate(split.items())}
        for k in SPLITS:  # shuffled once here, so a shard mixes classes and a shuffle buffer suffices
            for i in order[k]:
                path = root / rows[i][2]
                if not path.is_file():
                    raise DataError(f"{path}: listed at ingest but gone; re-run `dvc repro --force ingest-<name>`")
                raw = path.read_bytes()
                if hashlib.sha256(raw).hexdigest() != rows[i][4]:
                    raise DataError(f"{path}: changed since ingest (sha256 differs); re-run `dvc repro` from ingest")
                put(int(i), path.suffix.lower().lstrip("."), raw, str(path))
    else:
        index = {(r[2], r[3]): i for i, r in enumerate(rows)}
        for tar, digest in manifest["source_sha256"].items():
            for key, ext, raw, _ in iter_webdataset(root / tar):
                if not key:
                    if ext != digest:
                        raise DataError(f"{root / tar}: changed since ingest (sha256 differs); re-run `dvc repro` "
                                        f"from ingest")
                    continue
                put(index[(tar, key)], ext, raw, f"{root / tar}: sample {key!r}")
    shards = {k: w.close() for k, w in writers.items()}
    stats = {**meta, "encoding": "source bytes", "fields": list(FIELDS), "splits": {}}
    counts = _class_counts(labels, split)
    for k in SPLITS:
        stats["splits"][k] = {"samples": sum(s["samples"] for s in shards[k]), "shards": shards[k], **counts[k]}
    stat_images = np.stack([decoded["train"][i] for i in sorted(stats_idx)])
    mean, std = _channel_stats(stat_images, image["pixel_max"])
    evaluator = {k: (np.stack([decoded[k][i] for i in sorted(ev_idx[k])]), labels[sorted(ev_idx[k])])
                 for k in SPLITS if ev_idx[k]}
    return stats, evaluator, mean, std


def batcher(stats: dict, shard_dir: Path, options: BatchOptions) -> transforms.ImageBatcher:
    """How the reader batches these shards: each image decoded, augmented (``options.augment``) and scaled."""
    return transforms.ImageBatcher(stats, options)
