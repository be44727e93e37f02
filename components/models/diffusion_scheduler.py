"""The fixed forward process of a DDPM and its reverse-step rules, a part with explicit arguments
(as diffusers' schedulers): the pixel-space diffusion family (``components/models/diffusion.py``)
builds it from its config.

- q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), ᾱ_t = Π_{s≤t} (1 − β_s);
- β schedules: linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021), β clipped at 0.999;
- ancestral DDPM steps and deterministic DDIM steps (Song et al. 2021, η = 0) on any
  sub-sequence of the T steps; ε- or v-prediction (Salimans & Ho 2022).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

BetaSchedule = Literal["linear", "cosine"]
Prediction = Literal["eps", "v"]


def betas_for(timesteps: int, schedule: BetaSchedule, beta_start: float = 1e-4, beta_end: float = 0.02,
              cosine_s: float = 0.008) -> torch.Tensor:
    """β_1..β_T (float64): linear from ``beta_start`` to ``beta_end``, or cosine with offset ``cosine_s``."""
    T = timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule != "cosine":
        raise ValueError(f"unknown beta schedule {schedule!r}; valid: linear, cosine")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class NoiseScheduler:
    """The fixed forward process and the reverse-step rules; no parameters, nothing to train.

    Index ``t`` runs 0..T−1 (step t of the papers' 1..T).
    """

    def __init__(self, timesteps: int = 1000, schedule: BetaSchedule = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, cosine_s: float = 0.008, prediction: Prediction = "eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction {prediction!r}; valid: eps, v")
        self.prediction = prediction
        self.betas = betas_for(timesteps, schedule, beta_start, beta_end, cosine_s)
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.T = timesteps
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The table ``name`` (betas, alphas, alpha_bar) at ``t``, shaped to broadcast against ``like``."""
        # Each table is copied to a device once: a copy per step would make the host wait every step.
        key = (name, like.device)
        if key not in self._tables:
            self._tables[key] = getattr(self, name).to(like.device)
        return self._tables[key][t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A sample of q(x_t | x_0): √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        ab = self._at("alpha_bar", t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to output: ε, or v = √ᾱ ε − √(1−ᾱ) x_0."""
        if self.prediction == "eps":
            return noise
        ab = self._at("alpha_bar", t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def to_eps_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε, x̂_0) from the denoiser's output at x_t."""
        ab = self._at("alpha_bar", t, x_t)
        if self.prediction == "eps":
            eps = out
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        else:
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
            eps = ab.sqrt() * out + (1 - ab).sqrt() * x_t
        return eps, x0

    def eps_from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The ε for which x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        ab = self._at("alpha_bar", t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def step(self, eps: torch.Tensor, x_t: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """Ancestral DDPM: x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t + σ_t z, σ_t² = β_t (no noise at t = 0)."""
        tt = torch.full((len(x_t),), t, dtype=torch.long)
        beta, alpha, ab = (self._at(v, tt, x_t) for v in ("betas", "alphas", "alpha_bar"))
        mean = (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
        return mean if t == 0 or noise is None else mean + beta.sqrt() * noise

    def ddim_step(self, eps: torch.Tensor, x0: torch.Tensor, t_prev: int) -> torch.Tensor:
        """Deterministic DDIM (η = 0): x_{t_prev} = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε; t_prev = −1 is x_0."""
        if t_prev < 0:
            return x0
        ab = self.alpha_bar[t_prev].to(x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def timesteps_for(self, steps: int) -> list[int]:
        """``steps`` evenly spaced indices from T−1 down to 0."""
        steps = min(steps, self.T)
        return sorted({int(round(v)) for v in np.linspace(0, self.T - 1, steps)}, reverse=True)
