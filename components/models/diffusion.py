"""Denoising diffusion probabilistic models (Ho et al. 2020) with DDIM sampling and
classifier-free guidance.

- forward process in closed form: q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), ᾱ_t = Π_{s≤t} (1 − β_s);
- β schedules: linear 1e-4 → 0.02 over T = 1000 (Ho et al.), and cosine (Nichol & Dhariwal
  2021), ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2), β clipped at 0.999;
- the denoiser predicts ε and is trained with the simple loss ‖ε − ε_θ(x_t, t)‖², or predicts
  v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022) as an option;
- the shared U-Net (``components/models/unet.py``): sinusoidal time embedding, residual blocks
  with GroupNorm, self-attention at the lowest resolution, skip connections;
- EMA of the denoiser's weights, which is what is sampled and served;
- ``NoiseScheduler`` holds no parameters (``add_noise`` for training, ``step`` for sampling);
  samplers: ancestral DDPM (the survey's eq. 9, x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t + σ_t z
  with σ_t² = β_t) and deterministic DDIM (Song et al. 2021, η = 0) on any sub-sequence of steps;
- class-conditional training with label dropout (a "null" class) and classifier-free guidance
  (Ho & Salimans 2022) at sampling time: ε = ε_null + w (ε_y − ε_null).

Images are in [0, 1] outside the model and in [−1, 1] inside it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.config import ConfigError, bounds
from components.models.common import bind_images, check_evaluator, ema_update
from components.models.contract import Report
from components.models.diffusion_scheduler import NoiseScheduler
from components.models.unet import UNet
from components.tasks import image_generation as task
from components.training.steps import StepResult, SupervisedStep

PAPER = ("Ho et al. 2020, Denoising Diffusion Probabilistic Models (arXiv:2006.11239); DDIM: Song et al. 2021 "
         "(arXiv:2010.02502); classifier-free guidance: Ho & Salimans 2022 (arXiv:2207.12598)")
PRIMARY_METRIC, PRIMARY_MODE = "fid", "min"  # test FID of DDIM samples at ``eval_steps``
GENERATES = "images"  # scored by the shared sample-quality evaluator; compared with the dataset's other generators
SELECT_BY = (("fid", "min"), ("kid", "min"))
VAL_METRIC, VAL_MODE = "val_fid", "min"
SAMPLERS = ("ddim", "ddpm")


@dataclass
class Config:
    """``train.diffusion.model``."""
    timesteps: int = field(default=1000, metadata=bounds(ge=2))
    schedule: Literal["linear", "cosine"] = "cosine"
    beta_start: float = field(default=1e-4, metadata=bounds(gt=0, lt=1))
    beta_end: float = field(default=0.02, metadata=bounds(gt=0, lt=1))
    cosine_s: float = field(default=0.008, metadata=bounds(ge=0))
    prediction: Literal["eps", "v"] = "eps"
    width: int = field(default=64, metadata=bounds(ge=8))  # channels at full resolution, x2 per halving
    blocks: int = field(default=2, metadata=bounds(ge=1))  # residual blocks per resolution
    groups: int = field(default=8, metadata=bounds(ge=1))  # GroupNorm groups
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    ema_decay: float = field(default=0.999, metadata=bounds(ge=0, lt=1))
    conditional: bool = True
    label_dropout: float = field(default=0.1, metadata=bounds(ge=0, le=1))  # P(null class) in training
    guidance_scale: float = field(default=1.5, metadata=bounds(ge=0))  # w at sampling; 1 = no guidance
    sampler: Literal["ddim", "ddpm"] = "ddim"
    eval_steps: int = field(default=50, metadata=bounds(ge=1))  # DDIM steps of the primary metric
    val_steps: int = field(default=10, metadata=bounds(ge=1))  # DDIM steps of the per-epoch val FID
    # Samplers the test evaluation compares: "ddim<steps>" or "ddpm" (ancestral, all T steps;
    # about 20x DDIM-50's time).
    sweep: list[str] = field(default_factory=lambda: ["ddim10", "ddim50", "ddim250", "ddpm"])
    image_size: int = field(default=8, metadata=bounds(ge=0))  # 0: from the data (bind), as the next two
    in_channels: int = field(default=1, metadata=bounds(ge=0))
    num_classes: int = field(default=10, metadata=bounds(ge=0))

    def validate(self) -> None:
        if self.image_size % 2:
            raise ConfigError(f"image_size: the U-Net halves the resolution once, so it must be even, got {self.image_size}")
        if self.width % self.groups:
            raise ConfigError(f"groups: GroupNorm needs width ({self.width}) divisible by groups ({self.groups})")
        if self.schedule == "linear" and self.beta_end <= self.beta_start:
            raise ConfigError(f"beta_end: must exceed beta_start ({self.beta_start}), got {self.beta_end}")
        bad = [s for s in self.sweep if s != "ddpm" and not (s.startswith("ddim") and s[4:].isdigit() and int(s[4:]) > 0)]
        if bad:
            raise ConfigError(f"sweep: unknown sampler {bad}; use ddim<steps> (e.g. ddim50) or ddpm")


class Diffusion(nn.Module):
    """The denoiser and its EMA copy (sampled and served); the scheduler is rebuilt from the config."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.denoiser = UNet(cfg.in_channels, cfg.width, cfg.blocks, cfg.groups, cfg.dropout,
                             cfg.num_classes if cfg.conditional else 0)
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False)
        self.scheduler = NoiseScheduler(cfg.timesteps, cfg.schedule, cfg.beta_start, cfg.beta_end, cfg.cosine_s,
                                        cfg.prediction)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser(x_t, t, y)

    @torch.no_grad()
    def guided(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
               scale: float) -> torch.Tensor:
        """The network output with classifier-free guidance: out_null + w (out_y − out_null)."""
        if y is None or not self.cfg.conditional or scale == 1.0:
            return net(x, t, y)
        null = torch.full_like(y, self.cfg.num_classes)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    @torch.no_grad()
    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None, steps: int | None = None,
               sampler: str | None = None, guidance_scale: float | None = None, ema: bool = True,
               trajectory: list | None = None) -> torch.Tensor:
        """``n`` images in [0, 1]: DDIM over ``steps`` of the T steps, or ancestral DDPM over all T.

        ``trajectory``, when given, receives x̂_0 in [0, 1] at each step (for the denoising figure).
        """
        cfg, sch = self.cfg, self.scheduler
        net = self.ema if ema else self.denoiser
        was = net.training
        net.eval()
        sampler = sampler or cfg.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        gen = torch.Generator().manual_seed(seed)
        device = next(net.parameters()).device
        s = cfg.image_size
        x = torch.randn(n, cfg.in_channels, s, s, generator=gen).to(device)
        if cfg.conditional and labels is None:
            labels = torch.randint(0, cfg.num_classes, (n,), generator=gen)
        y = labels.to(device) if cfg.conditional else None
        ts = sch.timesteps_for(steps or cfg.eval_steps) if sampler == "ddim" else list(range(sch.T - 1, -1, -1))
        for i, t in enumerate(ts):
            tt = torch.full((n,), t, dtype=torch.long, device=device)
            _, x0 = sch.to_eps_x0(self.guided(net, x, tt, y, scale), x, tt)
            x0 = x0.clamp(-1, 1)  # images live in [-1, 1]; ε is re-derived so both stay consistent
            eps = sch.eps_from_x0(x0, x, tt)
            if sampler == "ddim":
                x = sch.ddim_step(eps, x0, ts[i + 1] if i + 1 < len(ts) else -1)
            else:
                x = sch.step(eps, x, t, torch.randn(x.shape, generator=gen).to(device))
            if trajectory is not None:
                trajectory.append(((x0 + 1) / 2).cpu())
        net.train(was)
        return ((x.clamp(-1, 1) + 1) / 2).cpu()


# ----------------------------------------------------------------------------- training

def training_step(model: Diffusion, batch: tuple[torch.Tensor, torch.Tensor], cfg: Config,
                  label_smoothing: float = 0.0, progress: float = 0.0) -> dict[str, Any]:
    """The simple loss: mean ‖target − net(x_t, t, y)‖² at t ~ U{0..T−1}; y dropped with p = label_dropout."""
    x0 = batch[0] * 2 - 1
    n = len(x0)
    t = torch.randint(0, cfg.timesteps, (n,), device=x0.device)
    noise = torch.randn_like(x0)
    core = model.module if hasattr(model, "module") else model
    x_t = core.scheduler.add_noise(x0, noise, t)
    y = None
    if cfg.conditional:
        drop = torch.rand(n, device=x0.device) < cfg.label_dropout
        y = torch.where(drop, torch.full_like(batch[1], cfg.num_classes), batch[1])
    loss = F.mse_loss(model(x_t, t, y), core.scheduler.target(x0, noise, t))
    return {"loss": loss, "count": torch.tensor(n)}


class Step(SupervisedStep):
    """The shared supervised step, then the EMA of the denoiser (with a warm-up of its decay)."""

    def __call__(self, batch: tuple, step: int) -> StepResult:
        out = super().__call__(batch, step)
        ema_update(self.core.ema, self.core.denoiser, self.core.cfg.ema_decay, step=step)
        return out


def build(cfg: Config) -> Diffusion:
    return Diffusion(cfg)


def bind(cfg: Config, stats: dict, data_dir) -> Config:
    bind_images(cfg, stats)
    check_evaluator(stats, data_dir, "diffusion")
    return cfg


def validate(model: Diffusion, cfg: Config, data_dir) -> dict[str, float]:
    """Sample quality of EMA DDIM samples at ``val_steps`` against val, on fixed noise."""
    from components.evaluation import generative

    return generative.score_samples(data_dir, "val", lambda n, y: model.sample(n, 0, y, steps=cfg.val_steps,
                                                                                sampler="ddim"), task.classes(cfg))


# ------------------------------------------------------------------------------ evaluate

def sampler_grid(cfg: Config) -> list[tuple[str, int]]:
    """(sampler, steps) of each ``cfg.sweep`` entry; ancestral DDPM runs all T steps."""
    return [("ddpm", cfg.timesteps) if s == "ddpm" else ("ddim", int(s[4:])) for s in cfg.sweep]


def evaluate(model: Diffusion, cfg: Config, shard_dir, split: str, detail: bool = True) -> dict:
    """The evaluator's metrics (with floor and ceiling) for DDIM at ``eval_steps`` (the unprefixed
    metrics), a sample grid and a denoising trajectory; with ``detail`` on test also every sampler
    of ``cfg.sweep`` (``ddim10_fid``..., ancestral DDPM runs all T steps) and the unguided
    class accuracy."""
    from components.evaluation import generative

    seed = 1 if split == "test" else 0

    def score(bounds: bool = False, **kw) -> dict:
        return generative.score_samples(shard_dir, split, lambda n, y: model.sample(n, seed, y, **kw),
                                        task.classes(cfg), bounds)

    result: dict[str, Any] = score(bounds=True, steps=cfg.eval_steps, sampler="ddim")
    result.update(eval_steps=cfg.eval_steps, guidance_scale=cfg.guidance_scale)
    if split != "test":
        return result
    if detail:
        quality = []
        for sampler, steps in sampler_grid(cfg):
            # the primary metrics' own sampler is scored once: the same seed draws the same samples
            scores = result if (sampler, steps) == ("ddim", cfg.eval_steps) else score(steps=steps, sampler=sampler)
            key = f"{sampler}{steps if sampler == 'ddim' else ''}"
            result.update({f"{key}_{m}": scores[m] for m in ("fid", "kid", "precision", "recall", "coverage")})
            quality.append({"sampler": sampler, "steps": steps, **scores})
        result["quality_by_steps"] = quality
        if cfg.conditional and cfg.guidance_scale != 1.0:
            plain = score(steps=cfg.eval_steps, guidance_scale=1.0)
            result["unguided_class_accuracy"], result["unguided_fid"] = plain["class_accuracy"], plain["fid"]
    result["grid"], result["classes"] = task.sample_grid(model.sample, cfg)
    trajectory: list = []
    model.sample(cfg.num_classes if cfg.conditional else 8, 99, torch.arange(cfg.num_classes) if cfg.conditional
                 else None, steps=cfg.eval_steps, trajectory=trajectory)
    picks = np.linspace(0, len(trajectory) - 1, 8).round().astype(int)
    result["trajectory"] = torch.stack([trajectory[i] for i in picks], 1).numpy()  # (rows, 8, C, H, W)
    return result


def report(result: dict, title: str, name: str, where: str) -> Report:
    from components.evaluation import generative, plots

    figures = {
        f"samples_{name}.png": generative.sample_grid(result, f"{title}\nDDIM-{result['eval_steps']} FID "
                                                      f"{result['fid']:.2f} (floor {result['fid_floor']:.2f}, noise "
                                                      f"{result['fid_ceiling']:.1f})"),
        f"trajectory_{name}.png": generative.sample_grid(result, f"{title}:\npredicted x0, noise (left) to sample "
                                                         f"(right)", key="trajectory")}
    quality = result.get("quality_by_steps", [])
    sweep = ""
    if quality:
        figures[f"quality_by_steps_{name}.png"] = plots.quality_by_steps(
            quality, result["fid_floor"], f"{title}: sample quality by sampler and steps")
        lines = "\n".join(f"| {q['sampler']} | {q['steps']} | {q['fid']:.3f} | {q['kid']:.4f} | {q['precision']:.3f} | "
                          f"{q['recall']:.3f} | {q['coverage']:.3f} |" for q in quality)
        sweep = (f"| sampler | steps | FID | KID | precision | recall | coverage |\n|---|---|---|---|---|---|---|\n"
                 f"{lines}\n\nQuality by steps: `{where}/quality_by_steps_{name}.png`\n\n")
    classes = ""
    if "class_accuracy" in result:
        classes = (f"Class accuracy with guidance w = {result['guidance_scale']}: {result['class_accuracy']:.4f}"
                   + (f" (without: {result['unguided_class_accuracy']:.4f}, FID {result['unguided_fid']:.3f})"
                      if "unguided_class_accuracy" in result else "") + "; ")
    return Report(f"## {title}\n\n{result['num_samples']} EMA samples per row against as many test images; the "
                  f"primary metrics are DDIM-{result['eval_steps']}.\n\n{generative.table(result)}\n{classes}classes "
                  f"covered {result['classes_covered']:.0f}/{len(result['classes'])}.\n\n{sweep}Images: "
                  f"`{where}/{{samples,trajectory}}_{name}.png`\n", figures)


# ------------------------------------------------------------------------------------ serving

def predict(model: Diffusion, model_input: Any, cfg: Config, steps: int | None = None, sampler: str | None = None,
            guidance_scale: float | None = None) -> np.ndarray:
    """Images for rows of (count, seed[, label]); ``steps``, ``sampler`` (ddim | ddpm) and
    ``guidance_scale`` default to the config's. (N, H, W) for one channel, float32 in [0, 1]."""
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if steps is not None and not 1 <= int(steps) <= cfg.timesteps:
        raise ValueError(f"steps must be in [1, {cfg.timesteps}], got {steps}")
    if guidance_scale is not None and guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    return task.predict(model.sample, model_input, cfg, steps=steps, sampler=sampler, guidance_scale=guidance_scale)


def signature(cfg: Config):
    from mlflow.types.schema import ParamSpec

    return task.signature(cfg, [ParamSpec("steps", "long", cfg.eval_steps), ParamSpec("sampler", "string", cfg.sampler),
                                ParamSpec("guidance_scale", "double", cfg.guidance_scale)])


def serving_example(cfg: Config):
    return task.serving_example(cfg)


def usage(name: str, cfg: Config) -> str:
    return task.usage(name, cfg, params='{"steps": 50, "sampler": "ddim", "guidance_scale": 2.0}',
                      note='sampler "ddpm" runs all T steps.')
