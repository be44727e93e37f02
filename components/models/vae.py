"""Variational autoencoders (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

- an encoder to q(z|x) = N(μ, diag σ²), output as (μ, log σ²); z = μ + σ·ε with ε ~ N(0, I)
  (the reparameterisation trick), so the sample is differentiable in μ and σ;
- a decoder to p(x|z): Bernoulli (logits; the usual choice for [0, 1] pixels) or Gaussian
  with a fixed standard deviation ``decoder_std``;
- the ELBO of the survey's eq. 6, L = E_q[log p(x|z)] − KL(q(z|x) ‖ N(0, I)), with the KL in
  closed form, ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1), in nats per image;
- β-VAE (Higgins et al. 2017): the KL weighted by β; β = 0 is a (noisy) autoencoder;
- KL annealing: the weight rises linearly from 0 to β over ``kl_warmup`` of the run
  (Bowman et al. 2016), or repeats that rise over ``kl_cycles`` cycles (cyclical, Fu et al.
  2019, ramping over the first half of each); both fight posterior collapse;
- a conditional VAE (Sohn et al. 2015): the class, one-hot, enters encoder and decoder;
- MLP or convolutional encoder/decoder (the conv one sized by the image size like DCGAN);
- ``prior: adversarial``: an adversarial autoencoder (Makhzani et al. 2016) instead of the KL
  term: a discriminator on the latent space tells samples of the prior N(0, I) from codes of
  q(z|x), and the encoder learns to fool it, so the aggregate posterior matches the prior and
  decoded prior samples look like the data. One optimizer serves both players: the
  discriminator's loss reaches only its own weights (the codes are detached), and the encoder's
  (non-saturating) loss reads the discriminator through detached weights.

Evaluation is in nats on the test split: the ELBO and the importance-weighted bound
(Burda et al. 2016) log p(x) ≥ E log (1/k) Σ_i p(x, z_i) / q(z_i|x), which is ≥ the ELBO
and tightens as k grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.config import ConfigError, bounds
from components.models.common import base_resolution, bind_images
from components.models.contract import Report
from components.tasks.images import image_shape

PAPER = "Kingma & Welling 2014, Auto-Encoding Variational Bayes (arXiv:1312.6114)"
PRIMARY_METRIC, PRIMARY_MODE = "iwae", "max"  # test log p(x) estimate in nats; register compares it
GENERATES = "images"  # scored by the shared sample-quality evaluator; compared with the dataset's other generators
SELECT_BY = (("elbo", "max"),)
VAL_METRIC, VAL_MODE = "val_loss", "min"  # −ELBO (β = 1) per image on val
MODES = ("encode", "decode", "reconstruct", "sample")
LOG_2PI = math.log(2 * math.pi)


@dataclass
class Config:
    """``train.vae.model``."""
    arch: Literal["mlp", "conv"] = "conv"
    latent_dim: int = field(default=16, metadata=bounds(ge=1))
    hidden: int = field(default=256, metadata=bounds(ge=1))  # MLP width
    width: int = field(default=32, metadata=bounds(ge=4))  # conv channels at full resolution
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    decoder_std: float = field(default=0.1, metadata=bounds(gt=0))  # Gaussian likelihood only
    beta: float = field(default=1.0, metadata=bounds(ge=0))
    kl_anneal: Literal["none", "linear", "cyclical"] = "linear"
    kl_warmup: float = field(default=0.3, metadata=bounds(ge=0, le=1))  # linear: fraction of the run
    kl_cycles: int = field(default=4, metadata=bounds(ge=1))  # cyclical
    conditional: bool = False
    prior: Literal["gaussian", "adversarial"] = "gaussian"  # adversarial: an adversarial autoencoder
    adversarial_weight: float = field(default=1.0, metadata=bounds(gt=0))  # of the two players' losses
    disc_hidden: int = field(default=256, metadata=bounds(ge=1))  # the latent discriminator's width
    image_size: int = field(default=8, metadata=bounds(ge=0))  # 0: from the data (bind), as the next two
    in_channels: int = field(default=1, metadata=bounds(ge=0))
    num_classes: int = field(default=10, metadata=bounds(ge=0))
    iwae_samples: int = field(default=100, metadata=bounds(ge=1))  # k of the test log p(x) estimate
    active_threshold: float = field(default=0.01, metadata=bounds(ge=0))  # nats of KL for an active unit

    def validate(self) -> None:
        if 0 < self.image_size < 4:
            raise ConfigError(f"image_size: at least 4, got {self.image_size}")

    @property
    def pixels(self) -> int:
        return self.in_channels * self.image_size ** 2


def kl_weight(cfg: Config, progress: float) -> float:
    """β times the annealing factor at ``progress`` (fraction of the run done, in [0, 1])."""
    if cfg.kl_anneal == "linear":
        return cfg.beta * (min(1.0, progress / cfg.kl_warmup) if cfg.kl_warmup > 0 else 1.0)
    if cfg.kl_anneal == "cyclical":
        phase = (progress * cfg.kl_cycles) % 1.0
        return cfg.beta * min(1.0, phase / 0.5)
    return cfg.beta


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per latent dimension, in closed form: (B, d)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    # Drawn on mu's device unless a generator says where (a host draw copied to a GPU would wait for it).
    eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator is not None else mu.device)
    eps = eps.to(mu)
    return mu + (0.5 * logvar).exp() * eps


class VAE(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        cond = cfg.num_classes if cfg.conditional else 0
        d = cfg.latent_dim
        if cfg.arch == "mlp":
            h = cfg.hidden
            self.encoder = nn.Sequential(nn.Linear(cfg.pixels + cond, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
            self.to_stats = nn.Linear(h, 2 * d)
            self.decoder = nn.Sequential(nn.Linear(d + cond, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                         nn.Linear(h, cfg.pixels))
        else:
            base, ups = base_resolution(cfg.image_size)  # halved down to 4x4 (or 7x7 for 28)
            c = cfg.width
            enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels + cond, c, 3, padding=1), nn.ReLU()]
            for _ in range(ups):
                enc += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU()]
                c *= 2
            self.encoder = nn.Sequential(*enc, nn.Flatten())
            self.to_stats = nn.Linear(c * base ** 2, 2 * d)
            dec: list[nn.Module] = [nn.Linear(d + cond, c * base ** 2), nn.ReLU(), nn.Unflatten(1, (c, base, base))]
            for _ in range(ups):
                dec += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.ReLU()]
                c //= 2
            self.decoder = nn.Sequential(*dec, nn.Conv2d(c, cfg.in_channels, 3, padding=1))
        self.discriminator = None
        if cfg.prior == "adversarial":
            h = cfg.disc_hidden
            self.discriminator = nn.Sequential(nn.Linear(d + cond, h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2),
                                               nn.Linear(h, 1))

    def _onehot(self, y: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.conditional:
            return None
        if y is None:
            raise ValueError("this VAE is conditional: pass the class labels")
        return F.one_hot(y, self.cfg.num_classes).to(like)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in [0, 1] -> (μ, log σ²), each (B, latent_dim)."""
        onehot = self._onehot(y, x)
        if self.cfg.arch == "mlp":
            h = x.flatten(1)
            h = torch.cat([h, onehot], 1) if onehot is not None else h
        else:
            h = x if onehot is None else torch.cat([x, onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        mu, logvar = self.to_stats(self.encoder(h)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Latents -> the likelihood's parameter: logits (Bernoulli) or means (Gaussian), (B, C, H, W)."""
        onehot = self._onehot(y, z)
        h = torch.cat([z, onehot], 1) if onehot is not None else z
        s = self.cfg.image_size
        return self.decoder(h).view(len(z), self.cfg.in_channels, s, s)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1]."""
        return torch.sigmoid(out) if self.cfg.likelihood == "bernoulli" else out.clamp(0, 1)

    def log_likelihood(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image, summed over pixels, in nats: (B,)."""
        if self.cfg.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        std = self.cfg.decoder_std
        return (-0.5 * ((x - out) / std) ** 2 - math.log(std) - 0.5 * LOG_2PI).flatten(1).sum(1)

    def adversarial(self, z: torch.Tensor, onehot: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The two players' losses on codes ``z`` of q(z|x) against as many draws of the prior.

        ``discriminator``: −log D(prior) − log(1 − D(z)), with ``z`` detached, so only the
        discriminator learns from it; ``encoder``: −log D(z) (non-saturating), through a copy of
        the discriminator's weights that takes no gradient, so only the encoder learns from it.
        A conditional model's discriminator also sees the class: the codes of every class must
        match the prior, so the class is left to the label and the code holds the style."""
        def joined(codes: torch.Tensor) -> torch.Tensor:
            return codes if onehot is None else torch.cat([codes, onehot], 1)

        prior = torch.randn_like(z)
        real, fake = self.discriminator(joined(prior)), self.discriminator(joined(z.detach()))
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        fooled = torch.func.functional_call(self.discriminator, frozen, (joined(z),))
        return {"discriminator": F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)),
                "encoder": F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled)),
                "d_real": torch.sigmoid(real).mean().detach(), "d_fake": torch.sigmoid(fake).mean().detach()}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[Any, ...]:
        """(decoder output, μ, log σ², the adversarial losses or None). Everything trained runs
        here, so DDP sees every parameter's gradient come from one forward."""
        mu, logvar = self.encode(x, y)
        z = reparameterise(mu, logvar)
        adversarial = None
        if self.discriminator is not None and self.training:
            adversarial = self.adversarial(z, self._onehot(y, z))
        return self.decode(z, y), mu, logvar, adversarial


def elbo_terms(model: VAE, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(log p(x|z) with one z ~ q, KL per dimension (B, d), the adversarial losses or None) for a
    batch. ``model`` may be wrapped in DDP: the forward goes through the wrapper (gradient sync),
    helpers through the module."""
    out, mu, logvar, adversarial = model(x, y)
    core = model.module if hasattr(model, "module") else model
    return core.log_likelihood(out, x), kl_divergence(mu, logvar), adversarial


# ------------------------------------------------------------------------- the family contract

def build(cfg: Config) -> VAE:
    return VAE(cfg)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    bind_images(cfg, stats)
    return cfg


def _labels(cfg: Config, batch: tuple) -> torch.Tensor | None:
    return batch[1] if cfg.conditional else None


def training_step(model: VAE, batch: tuple[torch.Tensor, torch.Tensor], cfg: Config,
                  label_smoothing: float = 0.0, progress: float = 0.0) -> dict[str, Any]:
    """−(E_q log p(x|z) − w·KL) per image, w = β × the annealing factor at ``progress``; for the
    adversarial autoencoder −E_q log p(x|z) plus ``adversarial_weight`` × both players' losses."""
    x = batch[0]
    rec, kl, adversarial = elbo_terms(model, x, _labels(cfg, batch))
    kl_sum = kl.sum(1)
    if adversarial is not None:
        loss = -rec.mean() + cfg.adversarial_weight * (adversarial["discriminator"] + adversarial["encoder"])
        return {"loss": loss, "count": torch.tensor(len(x)),
                "log": {"recon": -rec.detach().mean(), "kl": kl_sum.detach().mean(),
                        "d_loss": adversarial["discriminator"].detach(), "g_loss": adversarial["encoder"].detach(),
                        "d_real": adversarial["d_real"], "d_fake": adversarial["d_fake"]}}
    w = kl_weight(cfg, progress)
    loss = (-rec + w * kl_sum).mean()
    return {"loss": loss, "count": torch.tensor(len(x)),
            "log": {"recon": -rec.detach().mean(), "kl": kl_sum.detach().mean(), "kl_weight": w}}


@torch.no_grad()
def eval_step(model: VAE, batch: tuple[torch.Tensor, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Sums of −ELBO (β = 1: the true bound), reconstruction and KL, for exact means over ranks."""
    x = batch[0]
    rec, kl, _ = elbo_terms(model, x, _labels(cfg, batch))
    kl_sum = kl.sum(1)
    return {"loss": (kl_sum - rec).sum(), "recon": -rec.sum(), "kl": kl_sum.sum(), "count": torch.tensor(len(x))}


@torch.no_grad()
def iwae_bound(model: VAE, x: torch.Tensor, y: torch.Tensor | None, k: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), per image (B,), in nats."""
    mu, logvar = model.encode(x, y)
    std = (0.5 * logvar).exp()
    eps = torch.randn((k, *mu.shape), generator=generator)
    z = mu + std * eps  # (k, B, d)
    log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)
    log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
    ys = y.repeat(k) if y is not None else None
    out = model.decode(z.reshape(-1, mu.shape[1]), ys)
    log_lik = model.log_likelihood(out, x.repeat(k, 1, 1, 1)).view(k, -1)
    return torch.logsumexp(log_lik + log_prior - log_q, 0) - math.log(k)


def corrupt(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Out-of-distribution versions of test digits: additive noise, or a quarter turn."""
    if kind == "noise":
        return (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    if kind == "rotation":
        return torch.rot90(x, 1, dims=(2, 3))
    raise ValueError(kind)


# ------------------------------------------------------------------------------ evaluate

@torch.no_grad()
def evaluate(model: VAE, cfg: Config, shard_dir, split: str, detail: bool = True) -> dict:
    """ELBO, IWAE log p(x) (k = ``iwae_samples``), reconstruction error, active units, sample quality
    of prior samples through the shared evaluator, and anomaly AUROC of −ELBO; plus images."""
    from sklearn.metrics import roc_auc_score

    from components.data.registry import open_split
    from components.evaluation import generative

    model.eval()
    xs, ys = zip(*[(x, y) for x, y in open_split(shard_dir, split, batch_size=512)])
    x, y = torch.cat(xs), torch.cat(ys)
    cond = y if cfg.conditional else None
    gen = torch.Generator().manual_seed(0)
    mu, logvar = model.encode(x, cond)
    kl = kl_divergence(mu, logvar)  # (N, d)
    out = model.decode(mu, cond)
    z = reparameterise(mu, logvar, gen)
    rec_sampled = model.log_likelihood(model.decode(z, cond), x)
    elbo = rec_sampled - kl.sum(1)
    iwae = torch.cat([iwae_bound(model, x[i:i + 64], None if cond is None else cond[i:i + 64], cfg.iwae_samples, gen)
                      for i in range(0, len(x), 64)])
    kl_per_dim = kl.mean(0)
    result: dict[str, Any] = {
        "elbo": elbo.mean().item(), "iwae": iwae.mean().item(), "iwae_samples": cfg.iwae_samples,
        "recon_nats": -rec_sampled.mean().item(), "kl": kl.sum(1).mean().item(),
        "recon_mse": F.mse_loss(model.mean(out), x).item(),
        "active_units": int((kl_per_dim > cfg.active_threshold).sum()), "latent_dim": cfg.latent_dim,
        "kl_per_dim": kl_per_dim.tolist(), "num_samples": len(x),
    }
    labels = np.r_[np.zeros(len(x)), np.ones(len(x))]
    for kind in ("noise", "rotation"):  # score = −ELBO: higher = less like the training data
        bad = corrupt(x, kind, gen)
        mu_b, logvar_b = model.encode(bad, cond)
        z_b = reparameterise(mu_b, logvar_b, gen)
        elbo_b = model.log_likelihood(model.decode(z_b, cond), bad) - kl_divergence(mu_b, logvar_b).sum(1)
        result[f"auroc_{kind}"] = float(roc_auc_score(labels, torch.cat([-elbo, -elbo_b]).numpy()))

    classes = cfg.num_classes if cfg.conditional else None
    seed = 1 if split == "test" else 0
    result.update(generative.score_samples(shard_dir, split, lambda n, y: sample(model, n, seed, y), classes,
                                           bounds=True))

    # images for the report
    order = torch.argsort(kl_per_dim, descending=True)
    result["originals"], result["reconstructions"] = x[:16].numpy(), model.mean(out[:16]).numpy()
    result["samples"] = sample(model, 80, seed).numpy()
    base = mu[:1].repeat(9 * 2, 1)
    steps = torch.linspace(-3, 3, 9)
    for row, dim in enumerate(order[:2].tolist()):
        base[row * 9:(row + 1) * 9, dim] = steps
    result["traversal"] = model.mean(model.decode(base, None if cond is None else cond[:1].repeat(18))).numpy()
    result["traversal_dims"] = order[:2].tolist()
    result["latents"], result["labels"] = mu.numpy(), y.numpy()
    return result


@torch.no_grad()
def sample(model: VAE, n: int, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` decoder means from the prior N(0, I), noise seeded by ``seed``: (n, C, H, W) in [0, 1]."""
    model.eval()
    z = torch.randn(n, model.cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
    if model.cfg.conditional and labels is None:
        labels = torch.randint(0, model.cfg.num_classes, (n,), generator=torch.Generator().manual_seed(seed + 1))
    return model.mean(model.decode(z, labels if model.cfg.conditional else None))


def report(result: dict, title: str, name: str, where: str) -> Report:
    from components.evaluation import generative, plots

    pairs = np.stack([result["originals"], result["reconstructions"]], 1).reshape(-1, *result["originals"].shape[1:])
    figures = {
        f"reconstructions_{name}.png": plots.image_grid(pairs, 4, f"{title}: inputs (odd columns) and reconstructions"),
        f"samples_{name}.png": plots.image_grid(result["samples"], 8, f"{title}: prior samples, FID {result['fid']:.2f} "
                                                f"(floor {result['fid_floor']:.2f}, noise {result['fid_ceiling']:.1f})"),
        f"traversal_{name}.png": plots.image_grid(result["traversal"], 2, f"{title}: latent traversal −3..3",
                                                  [f"z{d}" for d in result["traversal_dims"]]),
        f"latents_{name}.png": plots.latent_projection(result["latents"], result["labels"],
                                                       f"{title}: test latents (PCA of μ)")}
    active = f"{result['active_units']}/{result['latent_dim']}"
    classes = f", class accuracy {result['class_accuracy']:.4f}" if "class_accuracy" in result else ""
    return Report(f"## {title}\n\nIn nats per image, {result['num_samples']} test images: ELBO {result['elbo']:.2f}, "
                  f"IWAE log p(x) {result['iwae']:.2f} (k = {result['iwae_samples']}), reconstruction "
                  f"{result['recon_nats']:.2f}, KL {result['kl']:.2f}; reconstruction MSE {result['recon_mse']:.4f}; "
                  f"active units {active} (KL > threshold).\n\nAnomaly detection by −ELBO, AUROC: noise "
                  f"{result['auroc_noise']:.3f}, quarter turn {result['auroc_rotation']:.3f}.\n\n"
                  f"Prior samples through the shared evaluator{classes}:\n\n{generative.table(result)}\n"
                  f"Images: `{where}/{{reconstructions,samples,traversal,latents}}_{name}.png`\n", figures)


# ------------------------------------------------------------------------------------ serving

def _as_float(batch: Any, what: str) -> torch.Tensor:
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"expected a numpy array of {what}, got {type(batch).__name__}")
    if not np.issubdtype(batch.dtype, np.floating):
        raise TypeError(f"expected a float array of {what}, got dtype {batch.dtype}")
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


@torch.no_grad()
def predict(model: VAE, batch: Any, cfg: Config, mode: str = "reconstruct", seed: int = 0,
            label: int = -1) -> np.ndarray:
    """By ``mode``: ``encode`` images (N, H·W) -> μ (N, d); ``decode`` latents (N, d) -> images;
    ``reconstruct`` images -> images; ``sample`` N rows (any values) -> N prior samples from
    ``seed``. Images are rows of H·W pixels in [0, 1] (sklearn's digits layout); outputs
    images as (N, H, W). ``label`` picks the class of a conditional VAE (−1 = from the data:
    random for sample, required otherwise)."""
    model.eval()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(batch, list):
        batch = np.asarray(batch, dtype=np.float32)
    if hasattr(batch, "to_numpy"):
        batch = batch.to_numpy(dtype=np.float32)
    t = _as_float(batch, "rows")
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D array (N, features), got shape {tuple(t.shape)}")
    n = len(t)
    y = None
    if cfg.conditional:
        if label < 0 and mode != "sample":
            raise ValueError(f"this VAE is conditional: pass params={{'label': 0..{cfg.num_classes - 1}}}")
        if label >= cfg.num_classes:
            raise ValueError(f"label must be in [0, {cfg.num_classes - 1}], got {label}")
        y = torch.full((n,), label) if label >= 0 else None
    s = cfg.image_size
    if mode == "sample":
        images = sample(model, n, seed, y)
    elif mode == "decode":
        if t.shape[1] != cfg.latent_dim:
            raise ValueError(f"decode takes latents of shape (N, {cfg.latent_dim}), got {tuple(t.shape)}")
        images = model.mean(model.decode(t, y))
    else:
        if t.shape[1] != cfg.pixels:
            raise ValueError(f"{mode} takes images as rows of {cfg.pixels} pixels (N, {cfg.pixels}) in [0, 1], "
                             f"got {tuple(t.shape)}; flatten (N, {s}, {s}) with images.reshape(len(images), -1)")
        x = t.view(n, cfg.in_channels, s, s)
        mu, _ = model.encode(x, y)
        if mode == "encode":
            return mu.numpy()
        images = model.mean(model.decode(mu, y))
    images = images.numpy()
    return images[:, 0] if cfg.in_channels == 1 else images


def signature(cfg: Config):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
                          params=ParamSchema([ParamSpec("mode", "string", "reconstruct"),
                                              ParamSpec("seed", "long", 0), ParamSpec("label", "long", -1)]))


def serving_example(cfg: Config) -> np.ndarray:
    return np.zeros((2, cfg.pixels), dtype=np.float32)


def usage(name: str, cfg: Config) -> str:
    label = (' A conditional model takes the class as `params={"label": k}` (required but for `sample`).'
             if cfg.conditional else '')
    return (f'`model = mlflow.pyfunc.load_model("models:/{name}@champion")`; `model.predict(images.reshape(n, '
            f'{cfg.pixels}), params={{"mode": "encode"}})` gives latent means (n, {cfg.latent_dim}); mode '
            f'`reconstruct` (default), `decode` (input: latents) and `sample` (input: n rows, `seed` param) give '
            f'float32 images {image_shape(cfg, "n")} in [0, 1].{label}')
