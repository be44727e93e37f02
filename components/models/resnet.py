"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition") and its variants.

- basic block (two 3x3 convs) and bottleneck block (1x1 reduce, 3x3, 1x1 expand x4);
- pre-activation ordering BN-ReLU-conv (He et al. 2016b, "Identity Mappings in Deep Residual Networks");
- ResNeXt grouped 3x3 convolutions, cardinality ``groups`` x ``width_per_group`` (Xie et al. 2017);
- a width multiplier (Wide ResNets, Zagoruyko & Komodakis 2016);
- the "Bag of Tricks" tweaks (He et al. 2019): B moves the downsampling stride from the
  bottleneck's first 1x1 to its 3x3, C replaces the 7x7 stem by three 3x3 convs, D puts a
  2x2 average pool before the 1x1 projection of the downsampling shortcut;
- CIFAR-style depths 6n+2 (basic) / 9n+2 (bottleneck) with stages of 16/32/64 channels and a
  3x3 stem, and ImageNet-style depths 18/34/50/101/152 with stages of 64..512 and a 7x7 stem.

Residual unit (eq. 1 of the paper): y = F(x, {W_i}) + W_s x, then ReLU (post-activation).

``arch: vit`` makes the family's classifier a Vision Transformer (Dosovitskiy et al. 2021) instead:
the image tower CLIP trains (``components/models/vit.py``) with the class count as its projection,
behind the same input normalisation; the data and the task (``components/tasks/image_classification.py``: training, evaluation,
serving) stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from components.config import ConfigError, bounds
from components.models.common import bind_images
from components.models.vit import VisionTransformer
from components.tasks.image_classification import (  # the task: training, evaluation and serving
    PRIMARY_METRIC as PRIMARY_METRIC,
    PRIMARY_MODE as PRIMARY_MODE,
    SELECT_BY as SELECT_BY,
    VAL_METRIC as VAL_METRIC,
    VAL_MODE as VAL_MODE,
    eval_step as eval_step,
    evaluate as evaluate,
    predict as predict,
    prepare_input as prepare_input,
    report as report,
    serving_example as serving_example,
    signature as signature,
    training_step as training_step,
    usage as usage,
)

PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition (arXiv:1512.03385)"

IMAGENET_LAYOUTS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


@dataclass
class Config:
    """``train.resnet.model``."""
    arch: Literal["resnet", "vit"] = "resnet"
    depth: int = field(default=20, metadata=bounds(ge=8))
    style: Literal["cifar", "imagenet"] = "cifar"
    block: Literal["basic", "bottleneck"] = "basic"  # CIFAR style only; ImageNet depths fix it
    preact: bool = False
    groups: int = field(default=1, metadata=bounds(ge=1))
    width_per_group: int = field(default=64, metadata=bounds(ge=1))
    width: float = field(default=1.0, metadata=bounds(gt=0))
    tweaks: list[Literal["B", "C", "D"]] = field(default_factory=list)
    zero_init_residual: bool = False
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    in_channels: int = field(default=1, metadata=bounds(ge=0))  # 0: from the data (bind), as the next two
    num_classes: int = field(default=10, metadata=bounds(ge=0))
    image_size: int = field(default=8, metadata=bounds(ge=0))
    augment: bool = True  # train on the dataset's augmentation (data.<name>.augment), run in the loader workers
    # Per-channel (x - mean) / std as the first layer, with the train split's statistics (bound from
    # stats.json): the model takes [0, 1] pixels, in training and from its users alike.
    normalize: bool = True
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # arch: vit: patch_size x patch_size patches, vit_layers pre-norm blocks of vit_width, vit_heads heads
    patch_size: int = field(default=2, metadata=bounds(ge=1))
    vit_width: int = field(default=64, metadata=bounds(ge=8))
    vit_layers: int = field(default=4, metadata=bounds(ge=1))
    vit_heads: int = field(default=4, metadata=bounds(ge=1))

    def validate(self) -> None:
        if self.arch == "vit":  # the ResNet keys are not read
            if self.image_size and self.image_size % self.patch_size:
                raise ConfigError(f"patch_size: must divide image_size ({self.image_size}), got {self.patch_size}")
            if self.vit_width % self.vit_heads:
                raise ConfigError(f"vit_heads: vit_width ({self.vit_width}) must be divisible by vit_heads "
                                  f"({self.vit_heads})")
            return
        if self.style == "imagenet" and self.depth not in IMAGENET_LAYOUTS:
            raise ConfigError(f"depth: ImageNet-style depths are {sorted(IMAGENET_LAYOUTS)}, got {self.depth}")
        if self.style == "cifar":
            per, name = (6, "6n+2") if self.block == "basic" else (9, "9n+2")
            if (self.depth - 2) % per:
                raise ConfigError(f"depth: CIFAR-style {self.block} depths are {name} (20, 32, 56, 110 for basic), got {self.depth}")
        if self.preact and self.zero_init_residual:
            raise ConfigError("zero_init_residual: a pre-activation block ends in a conv, not a BN; set it to false")
        if self.groups > 1 and self.layout()[0] == "basic":
            raise ConfigError("groups: ResNeXt cardinality needs bottleneck blocks (block: bottleneck or depth >= 50)")

    def layout(self) -> tuple[str, list[int], list[int]]:
        """(block type, blocks per stage, channels per stage before expansion)."""
        if self.style == "imagenet":
            block, blocks = IMAGENET_LAYOUTS[self.depth]
            return block, blocks, [64, 128, 256, 512]
        n = (self.depth - 2) // (6 if self.block == "basic" else 9)
        return self.block, [n, n, n], [16, 32, 64]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class Shortcut(nn.Sequential):
    """Projection W_s for a residual unit whose shape changes; tweak D average-pools first."""

    def __init__(self, c_in: int, c_out: int, stride: int, avg_down: bool, preact: bool):
        layers: list[nn.Module] = []
        if stride > 1 and avg_down:
            layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
            stride = 1
        layers.append(nn.Conv2d(c_in, c_out, 1, stride, bias=False))
        if not preact:
            layers.append(nn.BatchNorm2d(c_out))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, cfg: Config):
        super().__init__()
        width = max(1, round(planes * cfg.width))
        c_out = width  # Wide ResNets widen the whole basic block
        self.preact = cfg.preact
        if cfg.preact:
            self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
            self.bn2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        else:
            self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
            self.conv2, self.bn2 = _conv_bn(width, c_out, 3)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.shortcut = (Shortcut(c_in, c_out, stride, "D" in cfg.tweaks, cfg.preact)
                         if stride != 1 or c_in != c_out else None)
        self.out_channels = c_out

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = F.relu(self.bn1(x))
            identity = self.shortcut(out) if self.shortcut is not None else x
            out = self.conv1(out)
            out = self.conv2(self.drop(F.relu(self.bn2(out))))
            return out + identity
        identity = self.shortcut(x) if self.shortcut is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, cfg: Config):
        super().__init__()
        width = int(planes * cfg.width * cfg.width_per_group / 64) * cfg.groups  # ResNeXt: C x d
        c_out = planes * self.expansion
        s1, s3 = (1, stride) if "B" in cfg.tweaks else (stride, 1)  # tweak B: stride in the 3x3
        self.preact = cfg.preact
        if cfg.preact:
            self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 1, s1, bias=False)
            self.bn2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, s3, 1, groups=cfg.groups, bias=False)
            self.bn3, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, c_out, 1, bias=False)
        else:
            self.conv1, self.bn1 = _conv_bn(c_in, width, 1, s1)
            self.conv2, self.bn2 = _conv_bn(width, width, 3, s3, groups=cfg.groups)
            self.conv3, self.bn3 = _conv_bn(width, c_out, 1)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.shortcut = (Shortcut(c_in, c_out, stride, "D" in cfg.tweaks, cfg.preact)
                         if stride != 1 or c_in != c_out else None)
        self.out_channels = c_out

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = F.relu(self.bn1(x))
            identity = self.shortcut(out) if self.shortcut is not None else x
            out = self.conv1(out)
            out = self.conv2(F.relu(self.bn2(out)))
            out = self.conv3(self.drop(F.relu(self.bn3(out))))
            return out + identity
        identity = self.shortcut(x) if self.shortcut is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.drop(out)))
        return F.relu(out + identity)


def _normalization(module: nn.Module, cfg: Config) -> None:
    """The per-channel ``mean`` and ``inv_std`` buffers of the input normalisation (identity without stats)."""
    norm = cfg.normalize and bool(cfg.mean)
    module.register_buffer("mean", torch.tensor(cfg.mean if norm else [0.0]).view(1, -1, 1, 1))
    module.register_buffer("inv_std", 1 / torch.tensor(cfg.std if norm else [1.0]).view(1, -1, 1, 1))


class ResNet(nn.Module):
    """Images (B, C, H, W) -> class logits (B, num_classes)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        _normalization(self, cfg)
        block_name, blocks, planes = cfg.layout()
        block = BasicBlock if block_name == "basic" else Bottleneck
        c = planes[0]
        if cfg.style == "imagenet":
            stem_stride, pool = 2, nn.MaxPool2d(3, 2, 1)
        else:
            stem_stride, pool = 1, nn.Identity()
        if "C" in cfg.tweaks:  # tweak C: three 3x3 convs instead of one 7x7
            stem = [*_conv_bn(cfg.in_channels, c // 2, 3, stem_stride), nn.ReLU(inplace=True),
                    *_conv_bn(c // 2, c // 2, 3), nn.ReLU(inplace=True), *_conv_bn(c // 2, c, 3)]
        else:
            stem = _conv_bn(cfg.in_channels, c, 7 if cfg.style == "imagenet" else 3, stem_stride)
        self.stem = nn.Sequential(*stem, nn.ReLU(inplace=True), pool)

        stages, c_in = [], c
        for i, (n, p) in enumerate(zip(blocks, planes)):
            units = []
            for j in range(n):
                unit = block(c_in, p, 2 if (j == 0 and i > 0) else 1, cfg)
                units.append(unit)
                c_in = unit.out_channels
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.final_norm = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)) if cfg.preact else nn.Identity()
        self.fc = nn.Linear(c_in, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.inv_std
        x = self.final_norm(self.stages(self.stem(x)))  # (B, C, h, w)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ViTClassifier(nn.Module):
    """Images (B, C, H, W) -> class logits (B, num_classes): the input normalisation, then a Vision
    Transformer whose projection (with a bias) is the classifier."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        _normalization(self, cfg)
        self.vit = VisionTransformer(cfg.image_size, cfg.in_channels, cfg.patch_size, cfg.vit_width, cfg.vit_layers,
                                     cfg.vit_heads, cfg.num_classes, cfg.dropout, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.features((x - self.mean) * self.inv_std)  # (B, vit_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.proj(self.features(x))


# ------------------------------------------------------------------ the family contract

def build(cfg: Config) -> nn.Module:
    return ViTClassifier(cfg) if cfg.arch == "vit" else ResNet(cfg)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    """Image size, channels and classes from the shards (or checked against them), and the
    train split's per-channel mean and std for the input normalisation."""
    bind_images(cfg, stats)
    if cfg.normalize and "mean" in stats:
        cfg.mean, cfg.std = [float(m) for m in stats["mean"]], [max(float(s), 1e-6) for s in stats["std"]]
    return cfg


def loader_options(cfg: Config, world_size: int) -> dict:
    """Training batches come augmented from the loader workers (crops, flips: the data section's style)."""
    return {"augment": cfg.augment}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding), independently per image."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
