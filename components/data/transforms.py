"""Decoding and augmentation of images, run in the reading process (the trainer or a loader worker).

A shard's image is encoded (JPEG/PNG/WebP bytes, or a raw uint8 ``npy`` array (C, H, W)); the
transform turns it into a float32 tensor (C, S, S) in [0, 1] (pixel value / ``pixel_max``).
Per-channel normalisation is the model's first layer (its mean and std come from ``stats.json``),
so a registered model takes the same [0, 1] pixels that its users have.

Two augmentation styles, chosen by ``data.<name>.augment.style``:

- ``cifar`` (small images of one size): train pads ``pad`` zero pixels on every side and
  crops back to S x S at a random offset, then flips horizontally with probability 1/2 when
  ``flip``; evaluation takes the image as it is (resized to S if the source's images differ).
- ``imagenet`` (photos of any size): train takes a random crop of 8%..100% of the area
  (``min_scale``) with aspect ratio 3/4..4/3, resized to S x S, then flips (the
  RandomResizedCrop of Szegedy et al. 2015); evaluation resizes the shorter side to
  S / ``crop_ratio`` and takes the centre S x S (S = 224, 256 -> 224).
- ``none``: evaluation's transform for training too.

JPEGs are decoded at the smallest of libjpeg's 1/1, 1/2, 1/4, 1/8 scales that still covers
the crop at S x S (PIL's ``draft``), which is most of the speed of an ImageNet-style loader.
Images are decoded one at a time (:meth:`ImageTransform.decode`) and the ``cifar`` style's
shifts and flips are applied to a whole batch in one gather (:meth:`ImageTransform.augment`).
Randomness comes from the ``random.Random`` the reader passes, seeded by (seed, epoch, rank,
loader worker), drawn image by image: the same epoch gives the same crops, after a restart too,
and batching changes no pixel.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import numpy as np
import torch

from components.data.manifest import DataError
from components.data.shards import Batcher, BatchOptions, collate

STYLES = ("cifar", "imagenet", "none")


class ImageTransform:
    """Callable on a sample tuple whose first field is an encoded image; picklable for workers."""

    def __init__(self, image: dict, train: bool, uint8: bool = False):
        aug = image["augment"]
        self.style = aug["style"] if train else "eval-" + aug["style"]
        self.size = int(aug["size"])
        self.pad, self.flip = int(aug.get("pad", 0)), bool(aug.get("flip", False))
        self.min_scale, self.crop_ratio = float(aug.get("min_scale", 0.08)), float(aug.get("crop_ratio", 0.875))
        self.channels, self.pixel_max = int(image["channels"]), float(image["pixel_max"])
        self.mode = "L" if self.channels == 1 else "RGB"
        self.uint8 = uint8  # hand over uint8 pixels (4x fewer bytes between processes); scale later

    def __call__(self, sample: tuple, rng: random.Random) -> tuple:
        """One sample: its image decoded and augmented (the reader's batch path does the same per batch)."""
        raw, *rest = sample
        return (self.output(self.pixels(raw, rng)), *rest)

    def pixels(self, raw: Any, rng: random.Random) -> torch.Tensor:
        """One image as uint8 (C, S, S), decoded and augmented."""
        return self.augment(self.decode(raw, rng)[None], rng)[0]

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels as handed over: uint8 (``uint8=True``), else floats in [0, 1]."""
        return x if self.uint8 else x.float().div_(self.pixel_max)

    # ---------------------------------------------------------------- uint8 (C, S, S)

    def decode(self, raw: Any, rng: random.Random) -> torch.Tensor:
        """One image as uint8 (C, S, S): resized to S when its size differs; the ``imagenet``
        style's random crop and flip are drawn here (they shape the decode), the ``cifar``
        style's shift and flip later, per batch (:meth:`augment`). Bad bytes raise DataError."""
        try:
            return self._decode(raw, rng)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for bad image bytes
            raise DataError(f"cannot decode an image ({type(exc).__name__}: {exc})") from None

    def _decode(self, raw: Any, rng: random.Random) -> torch.Tensor:
        if isinstance(raw, torch.Tensor):  # a raw uint8 array: digits, CIFAR, MNIST
            x = raw if raw.dim() == 3 else raw[None]
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = _resize_tensor(x, self.size)
            return x
        from PIL import Image

        img = Image.open(io.BytesIO(raw))
        w, h = img.size
        if self.style == "imagenet":
            box = random_resized_crop(w, h, self.min_scale, rng)
        elif self.style == "eval-imagenet":
            side = min(w, h) * self.crop_ratio
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        else:
            box = (0.0, 0.0, float(w), float(h))
        img, box = _draft(img, box, self.size, self.mode)
        img = img.convert(self.mode).resize((self.size, self.size), Image.BILINEAR, box=box, reducing_gap=None)
        x = torch.from_numpy(np.asarray(img).copy())
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        if self.style == "imagenet" and self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return x

    def augment(self, x: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """The ``cifar`` style's augmentation of a uint8 batch (N, C, S, S); other styles return it.

        Image i is cropped from its zero-padded copy at a random offset, then flipped with
        probability 1/2: the draws are made image by image (shift, then flip), so a batch
        gets exactly the pixels its images would get one at a time. The crop at offset
        (dy, dx) is a gather of rows ``p + dy + arange(S)`` and columns ``p + dx + arange(S)``
        of the padded batch (reversed columns for a flipped image): one indexing op per batch
        instead of a copy per image, which made per-image augmentation the reader's largest
        cost on small images.
        """
        if self.style != "cifar" or not (self.pad or self.flip):
            return x
        n, _, h, w = x.shape
        p = self.pad
        shifts, flips = [], []
        for _ in range(n):
            shifts.append((rng.randint(0, 2 * p), rng.randint(0, 2 * p)) if p else (0, 0))
            flips.append(self.flip and rng.random() < 0.5)
        offsets = torch.tensor(shifts, dtype=torch.long)
        rows = offsets[:, :1] + torch.arange(h)  # (N, S)
        cols = offsets[:, 1:] + torch.arange(w)
        flipped = torch.tensor(flips, dtype=torch.bool)
        cols = torch.where(flipped[:, None], cols.flip(-1), cols)
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]


def random_resized_crop(w: int, h: int, min_scale: float, rng: random.Random,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[float, float, float, float]:
    """A crop box (left, top, right, bottom) of min_scale..1 of the area and aspect ratio in
    ``ratio`` (log-uniform); after 10 misses, the centre crop of the clamped ratio."""
    area, log_lo, log_hi = w * h, math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if cw <= w and ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (x0, y0, x0 + cw, y0 + ch)
    aspect = min(max(w / h, ratio[0]), ratio[1])
    cw, ch = (w, w / aspect) if w / h < aspect else (h * aspect, h) if w / h > aspect else (w, h)
    return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)


def _draft(img, box: tuple[float, float, float, float], size: int, mode: str):
    """Let libjpeg decode at a reduced scale when the crop stays >= ``size`` pixels; the box is
    rescaled to the decoded image."""
    if img.format != "JPEG":
        return img, box
    w, h = img.size
    crop = min(box[2] - box[0], box[3] - box[1])
    factor = crop / size
    if factor < 2:
        return img, box
    img.draft(mode if mode == "L" else "RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    sx, sy = img.size[0] / w, img.size[1] / h
    return img, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.nn.functional.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def for_stats(stats: dict, train: bool, uint8: bool = False) -> ImageTransform:
    """The transform that ``stats.json`` (its ``image`` entry) says the shards need."""
    return ImageTransform(stats["image"], train, uint8)


class ImageBatcher(Batcher):
    """Samples whose first field is an encoded image: each decoded to uint8 as it is read, a
    batch's ``cifar``-style shifts and flips in one gather (the same pixels as one at a time),
    then uint8 or [0, 1] floats (``uint8_images``: scaled by :meth:`on_device` where the model is).
    The other fields are collated as they are (a class, a caption's tokens)."""

    def __init__(self, stats: dict, options: BatchOptions):
        self.transform = for_stats(stats, options.augment, options.uint8_images)
        self.pixel_max = float(stats["image"]["pixel_max"])
        self.uint8 = options.uint8_images

    def decode(self, sample: tuple, rng: random.Random) -> tuple:
        return (self.transform.decode(sample[0], rng), *sample[1:])

    def single(self, sample: tuple, rng: random.Random) -> tuple:
        x, *rest = sample
        return (self.transform.output(self.transform.augment(x[None], rng)[0]), *rest)

    def batch(self, samples: list[tuple], rng: random.Random, generator: torch.Generator) -> tuple:
        pixels = self.transform.augment(torch.stack([s[0] for s in samples]), rng)
        return (self.transform.output(pixels), *collate([s[1:] for s in samples]))

    def on_device(self, batch: tuple) -> tuple:
        return scale(batch, self.pixel_max) if self.uint8 else batch


def scale(batch: tuple, pixel_max: float) -> tuple:
    """A batch of uint8 images (from ``uint8=True``) as floats in [0, 1], on whatever device it is."""
    return (batch[0].float().div_(pixel_max), *batch[1:])
