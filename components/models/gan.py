"""Generative adversarial networks (Goodfellow et al. 2014) with the DCGAN architecture
(Radford et al. 2016), sized by the image size, and the losses and stabilisers that followed.

- losses: the original minimax game (Goodfellow et al. eq. 5 / survey eq. 5),
  V(D, G) = E_x[log D(x)] + E_z[log(1 − D(G(z)))]; its non-saturating generator loss
  −log D(G(z)) (same paper, section 3); WGAN-GP (Gulrajani et al. 2017, a critic with a
  gradient penalty λ E(‖∇D(x̂)‖ − 1)² on interpolates); least squares (Mao et al. 2017,
  a = 0, b = c = 1); hinge (Lim & Ye 2017; Miyato et al. 2018);
- spectral normalisation of every discriminator layer (Miyato et al. 2018);
- a class-conditional generator (conditional BatchNorm, one gain and bias per class) and a
  projection discriminator (Miyato & Koyama 2018): D(x, y) = ψ(φ(x)) + embed(y)·φ(x);
- two optimizers, each with its own learning-rate schedule (D's lr = lr × ``d_lr_scale``,
  the two time-scale rule of Heusel et al. 2017), ``n_critic`` D steps per G step;
- an exponential moving average of the generator's weights (Yazıcı et al. 2019), which is
  what is evaluated and served;
- one-sided label smoothing (Salimans et al. 2016) from ``train.gan.label_smoothing``: real
  targets become 1 − s, fake targets stay 0.

Images are in [0, 1] outside the model and in [−1, 1] inside it (tanh output).
The GAN owns its training step (``Step``): the shared loop, checkpoints, Ray Train and
Tune run it as any other family's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from components.config import ConfigError, OptimizerConfig, ScheduleConfig, bounds
from components.models.common import base_resolution, bind_images, check_evaluator
from components.models.contract import Report
from components.models.gan_step import (
    Step as Step,  # the family's own step (the contract's Step)
)
from components.tasks import image_generation as task

PAPER = ("Goodfellow et al. 2014, Generative Adversarial Nets (arXiv:1406.2661); DCGAN: Radford et al. 2016 "
         "(arXiv:1511.06434); spectral norm and projection D: Miyato et al. 2018 (arXiv:1802.05957, 1802.05637)")
PRIMARY_METRIC, PRIMARY_MODE = "fid", "min"  # test FID through the shared evaluator; register compares it
GENERATES = "images"  # scored by the shared sample-quality evaluator; compared with the dataset's other generators
SELECT_BY = (("fid", "min"), ("kid", "min"))
VAL_METRIC, VAL_MODE = "val_fid", "min"


@dataclass
class Config:
    """``train.gan.model``. The generator uses ``train.gan.{lr,optimizer,schedule}``."""
    latent_dim: int = field(default=64, metadata=bounds(ge=1))
    width: int = field(default=64, metadata=bounds(ge=4))  # channels at full resolution; x2 per halving
    image_size: int = field(default=8, metadata=bounds(ge=0))  # 0: from the data (bind), as the next two
    in_channels: int = field(default=1, metadata=bounds(ge=0))
    num_classes: int = field(default=10, metadata=bounds(ge=0))
    conditional: bool = True
    loss: Literal["minimax", "non_saturating", "wgan_gp", "least_squares", "hinge"] = "hinge"
    gp_weight: float = field(default=10.0, metadata=bounds(ge=0))  # WGAN-GP's λ
    spectral_norm: bool = True
    n_critic: int = field(default=1, metadata=bounds(ge=1))  # D steps per G step
    ema_decay: float = field(default=0.999, metadata=bounds(ge=0, lt=1))  # 0 = no EMA (a copy)
    d_lr_scale: float = field(default=1.0, metadata=bounds(gt=0))  # D's lr = lr x this (TTUR)
    d_optimizer: OptimizerConfig | None = None  # None = train.gan.optimizer
    d_schedule: ScheduleConfig | None = None  # None = train.gan.schedule

    def validate(self) -> None:
        if 0 < self.image_size < 4:
            raise ConfigError(f"image_size: at least 4, got {self.image_size}")

    @property
    def base(self) -> int:
        """The generator's first resolution (4 for 8/16/32/64, 7 for 28/224); it doubles ``ups`` times."""
        return base_resolution(self.image_size)[0]

    @property
    def ups(self) -> int:
        return base_resolution(self.image_size)[1]


# ---------------------------------------------------------------------------------- networks

class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (plain BatchNorm when unconditional)."""

    def __init__(self, channels: int, num_classes: int | None):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=num_classes is None)
        if num_classes is not None:
            self.gain, self.bias = nn.Embedding(num_classes, channels), nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        self.conditional = num_classes is not None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.bn(x)
        if not self.conditional:
            return h
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """z (B, latent) [+ class y] -> images (B, C, S, S) in [-1, 1].

    Linear to base x base x (width·2^ups) (base 4, or 7 for 28 and 224), then ``ups`` fractionally-strided 4x4 convolutions that
    double the resolution and halve the channels, each followed by (conditional) BatchNorm
    and ReLU, and a 3x3 convolution to the image channels with tanh.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        classes = cfg.num_classes if cfg.conditional else None
        c = cfg.width * 2 ** cfg.ups
        self.project = nn.Linear(cfg.latent_dim, c * cfg.base ** 2)
        self.norms = nn.ModuleList([ConditionalBatchNorm(c, classes)])
        self.ups = nn.ModuleList()
        for _ in range(cfg.ups):
            self.ups.append(nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False))
            c //= 2
            self.norms.append(ConditionalBatchNorm(c, classes))
        self.out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.project(z).view(len(z), -1, self.cfg.base, self.cfg.base)
        h = F.relu(self.norms[0](h, y))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = F.relu(norm(up(h), y))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """images (B, C, S, S) in [-1, 1] [+ class y] -> one logit (or critic value) per image.

    A 3x3 convolution, then ``ups`` strided 4x4 convolutions that halve the resolution and
    double the channels down to 4x4, LeakyReLU(0.2) throughout and no BatchNorm (it would
    couple the samples of a batch, which the gradient penalty assumes independent); φ(x)
    is the flattened 4x4 map, ψ a linear layer, and the projection adds embed(y)·φ(x).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        c = cfg.width
        layers: list[nn.Module] = [sn(nn.Conv2d(cfg.in_channels, c, 3, padding=1)), nn.LeakyReLU(0.2)]
        for _ in range(cfg.ups):
            layers += [sn(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [sn(nn.Conv2d(c, c, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.psi = sn(nn.Linear(c * cfg.base ** 2, 1))
        self.embed = sn(nn.Embedding(cfg.num_classes, c * cfg.base ** 2)) if cfg.conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        phi = torch.flatten(self.body(x), 1)
        out = self.psi(phi).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * phi).sum(1)
        return out


class GAN(nn.Module):
    """The generator, the discriminator and the EMA generator (what evaluation and serving use)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False)

    def latents(self, n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)

    @torch.no_grad()
    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None, ema: bool = True) -> torch.Tensor:
        """``n`` images in [0, 1] from noise seeded by ``seed`` (eval mode: BatchNorm uses running stats)."""
        net = self.ema if ema else self.generator
        was = net.training
        net.eval()
        device = next(net.parameters()).device
        if self.cfg.conditional and labels is None:
            labels = torch.randint(0, self.cfg.num_classes, (n,), generator=torch.Generator().manual_seed(seed + 1))
        y = labels.to(device) if self.cfg.conditional else None
        out = (net(self.latents(n, seed, device), y) + 1) / 2
        net.train(was)
        return out


# ------------------------------------------------------------------------------------ the step

def compiled_modules(model: GAN) -> list[nn.Module]:
    """What ``train.gan.compile`` compiles: the step calls the two networks, not the GAN's forward."""
    return [model.generator, model.discriminator]


# ------------------------------------------------------------------------- the family contract

def build(cfg: Config) -> GAN:
    return GAN(cfg)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    """Check the images and class count against the shards; the evaluator must be there."""
    bind_images(cfg, stats)
    check_evaluator(stats, data_dir, "gan")
    return cfg


def validate(model: GAN, cfg: Config, data_dir) -> dict[str, float]:
    """FID, KID, precision/recall/density/coverage (and class accuracy) of the EMA generator
    against the val split, on fixed noise: the per-epoch metric tune compares."""
    from components.evaluation import generative

    return generative.score_samples(data_dir, "val", lambda n, y: model.sample(n, 0, y), task.classes(cfg))


def evaluate(model: GAN, cfg: Config, shard_dir, split: str, detail: bool = True) -> dict:
    """Every evaluator metric of EMA samples with its floor and ceiling, the raw generator's FID,
    and a sample grid from fixed noise (one row per class when conditional)."""
    from components.evaluation import generative

    seed = 1 if split == "test" else 0  # test samples are not the noise that selection saw
    result = generative.score_samples(shard_dir, split, lambda n, y: model.sample(n, seed, y), task.classes(cfg),
                                      bounds=True)
    result["generator_fid"] = generative.score_samples(  # without EMA, for comparison
        shard_dir, split, lambda n, y: model.sample(n, seed, y, ema=False), task.classes(cfg))["fid"]
    result["grid"], result["classes"] = task.sample_grid(model.sample, cfg)
    return result


def report(result: dict, title: str, name: str, where: str) -> Report:
    from components.evaluation import generative

    classes = (f"class accuracy of conditional samples {result['class_accuracy']:.4f}; "
               if "class_accuracy" in result else "")
    figure = generative.sample_grid(result, f"{title}\nFID {result['fid']:.2f} (floor {result['fid_floor']:.2f}, "
                                            f"noise {result['fid_ceiling']:.1f})")
    return Report(f"## {title}\n\n{result['num_samples']} samples of the EMA generator against as many test images."
                  f"\n\n{generative.table(result)}\n{classes}classes covered {result['classes_covered']:.0f}/"
                  f"{len(result['classes'])}, class balance {result['class_balance']:.3f}; FID without EMA "
                  f"{result['generator_fid']:.3f}.\n\nSamples (one row per class): `{where}/samples_{name}.png`; D(x) "
                  f"and D(G(z)) per step: `d_real.csv` and `d_fake.csv` in the train stage's plots.\n",
                  {f"samples_{name}.png": figure})


# ------------------------------------------------------------------------------------ serving

def predict(model: GAN, model_input: Any, cfg: Config) -> np.ndarray:
    """Images (N, H, W) for one channel, else (N, C, H, W), float32 in [0, 1]; rows in request order."""
    return task.predict(model.sample, model_input, cfg)


def signature(cfg: Config):
    return task.signature(cfg)


def serving_example(cfg: Config):
    return task.serving_example(cfg)


def usage(name: str, cfg: Config) -> str:
    return task.usage(name, cfg)
