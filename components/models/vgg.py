"""Plain convolutional networks in the style of VGG (Simonyan & Zisserman 2015), an image classifier.

Paper facts it follows (Section 2.1): stacks of 3x3 convolutions (stride 1, padding 1, so a stack
keeps the spatial size) each followed by a ReLU, a 2x2 max-pool (stride 2) between stacks, the
channel count growing stage by stage. Departures for small images, as the CIFAR adaptations
do: BatchNorm after each convolution (Ioffe & Szegedy 2015; ``batch_norm: false`` for the
original), and global average pooling into one linear classifier instead of three large
fully connected layers. Without shortcuts it is the plain network ResNet is measured against
(He et al. 2016, Section 4.1).

The family is its config, its ``build`` and its task: training, evaluation and serving are the
image-classification task's (``components/tasks/image_classification.py``). It is the worked
example of docs/pipeline.md, "Adding an algorithm": try it on the digits with
``algorithms.vgg: {family: vgg, dataset: digits}`` and ``train.vgg`` / ``tune.vgg`` sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from components.config import ConfigError, bounds
from components.models.common import bind_images
from components.tasks.image_classification import (  # the task: training, evaluation and serving
    PRIMARY_METRIC as PRIMARY_METRIC,
    PRIMARY_MODE as PRIMARY_MODE,
    SELECT_BY as SELECT_BY,
    VAL_METRIC as VAL_METRIC,
    VAL_MODE as VAL_MODE,
    eval_step as eval_step,
    evaluate as evaluate,
    predict as predict,
    report as report,
    serving_example as serving_example,
    signature as signature,
    training_step as training_step,
    usage as usage,
)

PAPER = ("Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image Recognition "
         "(arXiv:1409.1556)")


@dataclass
class Config:
    """``train.<algo>.model`` of a VGG-style classifier."""
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # channels per stage; 2x2 max-pool between
    convs: list[int] = field(default_factory=lambda: [2, 2, 2])  # 3x3 convolutions per stage (VGG-16: 2,2,3,3,3)
    batch_norm: bool = True
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))  # before the classifier
    in_channels: int = field(default=0, metadata=bounds(ge=0))  # 0: from the data (bind), as the next two
    image_size: int = field(default=0, metadata=bounds(ge=0))
    num_classes: int = field(default=0, metadata=bounds(ge=0))

    def validate(self) -> None:
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"widths: one positive channel count per stage, got {self.widths}")
        if len(self.convs) != len(self.widths) or min(self.convs) < 1:
            raise ConfigError(f"convs: one positive convolution count per stage of widths ({len(self.widths)}), "
                              f"got {self.convs}")
        pools = len(self.widths) - 1
        if self.image_size and self.image_size < 2 ** pools:
            raise ConfigError(f"widths: {len(self.widths)} stages halve the image {pools} times, more than "
                              f"{self.image_size}x{self.image_size} images allow; use at most "
                              f"{self.image_size.bit_length()} stages")


def build(cfg: Config) -> nn.Sequential:
    """conv3x3-[BN]-ReLU x ``convs[i]`` in stage i, max-pools between, then global average
    pooling, dropout and a linear classifier: images (B, C, H, W) in [0, 1] -> logits (B, classes)."""
    layers: list[nn.Module] = []
    channels = cfg.in_channels
    for stage, (width, convs) in enumerate(zip(cfg.widths, cfg.convs)):
        if stage:
            layers.append(nn.MaxPool2d(2))
        for _ in range(convs):
            layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not cfg.batch_norm))
            layers += [nn.BatchNorm2d(width)] if cfg.batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(channels, cfg.num_classes)]
    return nn.Sequential(*layers)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    """Image size, channels and classes from the shards (or checked against them)."""
    return bind_images(cfg, stats)
