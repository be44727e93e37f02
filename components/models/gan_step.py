"""The GAN's losses and its optimisation step (``components/models/gan.py``): one D update per
batch and one G update every ``n_critic`` batches, each network with its own optimizer and LR
schedule, then the EMA of G; under DDP the two networks' gradients are all-reduced by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.models.common import ema_update
from components.training import optim, schedules
from components.training.steps import StepResult

LOSSES = ("minimax", "non_saturating", "wgan_gp", "least_squares", "hinge")

# ------------------------------------------------------------------------------------ losses

def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, real_target: float = 1.0) -> torch.Tensor:
    """The discriminator's (or critic's) loss from its outputs on real and generated images.

    For ``minimax`` and ``non_saturating`` (the same D objective) this is −V(D, G) with
    D = sigmoid(logit): at D = 1/2 everywhere it is 2 log 2.
    """
    if kind in ("minimax", "non_saturating"):
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_target))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "least_squares":
        return 0.5 * ((real - real_target) ** 2).mean() + 0.5 * (fake ** 2).mean()
    if kind == "wgan_gp":
        return fake.mean() - real.mean()  # the penalty is added by the step
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: {LOSSES}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from D's outputs on its images.

    ``minimax`` minimises E log(1 − D(G(z))) (saturates when D wins early: its gradient
    vanishes as D(G(z)) → 0); ``non_saturating`` minimises −E log D(G(z)) instead.
    """
    if kind == "minimax":
        return -F.softplus(fake).mean()  # log(1 − sigmoid(l)) = −softplus(l)
    if kind == "non_saturating":
        return F.softplus(-fake).mean()  # −log sigmoid(l)
    if kind == "least_squares":
        return 0.5 * ((fake - 1) ** 2).mean()
    if kind in ("wgan_gp", "hinge"):
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: {LOSSES}")


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """E[(‖∇x̂ D(x̂)‖₂ − 1)²] at x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1] per sample (Gulrajani et al. 2017)."""
    eps = torch.rand(len(real), *([1] * (real.ndim - 1)), generator=generator,
                     device=generator.device if generator is not None else real.device).to(real)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# ------------------------------------------------------------------------------ the GAN step

def _all_reduce_grads(module: nn.Module, world_size: int) -> None:
    """Average gradients over the worker group, as DDP would (DDP's hooks cannot follow the
    double backward of the gradient penalty, so the GAN reduces explicitly, in one bucket)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world_size < 2 or not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_buffers(module: nn.Module, world_size: int) -> None:
    """Rank 0's BatchNorm statistics and spectral-norm vectors on every rank (as DDP does)."""
    if world_size > 1:
        for b in module.buffers():
            torch.distributed.broadcast(b, 0)


class Step:
    """One D update per batch and one G update every ``n_critic`` batches, then the EMA.

    Each network has its own optimizer and schedule: D's runs over every step, G's over its
    own (fewer) steps. Noise is seeded by (seed, rank, step): every worker draws different
    latents, and a resumed run draws exactly what the uninterrupted one would have.
    """

    def __init__(self, model: nn.Module, cfg: Any, family: Any, total_steps: int,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        m = cfg.model  # the GAN's own config: loss, n_critic, latent_dim, d_lr_scale, d_optimizer, ...
        self.model, self.m, self.seed, self.autocast = model, m, cfg.seed, autocast
        self.real_target = 1.0 - cfg.label_smoothing
        self.grad_clip = cfg.grad_clip
        d_lr = cfg.lr * m.d_lr_scale
        self.opt_g = optim.build(model.generator, cfg.optimizer, cfg.lr)
        self.opt_d = optim.build(model.discriminator, m.d_optimizer or cfg.optimizer, d_lr)
        self.lr_g = schedules.build(cfg.schedule, cfg.lr, max(1, total_steps // m.n_critic))
        self.lr_d = schedules.build(m.d_schedule or cfg.schedule, d_lr, total_steps)
        self.rank, self.world_size = 0, 1
        self.last_g: dict[str, float] = {}

    def distribute(self, world_size: int) -> None:
        self.world_size = world_size
        self.rank = torch.distributed.get_rank() if world_size > 1 else 0

    def _update(self, opt: torch.optim.Optimizer, net: nn.Module, loss: torch.Tensor, lr: float) -> torch.Tensor | None:
        optim.set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _all_reduce_grads(net, self.world_size)
        norm = nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip) if self.grad_clip > 0 else None
        opt.step()
        _broadcast_buffers(net, self.world_size)
        return norm

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> StepResult:
        G, D, m = self.model.generator, self.model.discriminator, self.m
        real, labels = batch
        real = real * 2 - 1
        y = labels if m.conditional else None
        device = real.device
        # Noise is drawn where it is used: a host-drawn tensor copied to a GPU would make the host
        # wait for the GPU every step (a pageable copy synchronises its stream). On a CPU the
        # draws are what they were; a GPU's generator draws other numbers from the same seed.
        gen = torch.Generator(device).manual_seed(
            int(np.random.SeedSequence([self.seed, self.rank, step]).generate_state(1)[0]))
        z = torch.randn(len(real), m.latent_dim, generator=gen, device=device)

        with self.autocast():
            with torch.no_grad():
                fake = G(z, y)
            out_real, out_fake = D(real, y), D(fake, y)
            loss = d_loss(m.loss, out_real, out_fake, self.real_target)
        log = {"lr": self.lr_g(step // m.n_critic), "lr_d": self.lr_d(step)}
        if m.loss == "wgan_gp" and m.gp_weight > 0:
            gp = gradient_penalty(lambda x: D(x, y), real, fake, gen)
            loss = loss + m.gp_weight * gp
            log["gradient_penalty"] = gp.detach()
        # Log values stay on the device (the loop reads them every log_every steps, and stops
        # the run there if one is NaN or infinite).
        log.update(loss=loss.detach(), **self._d_outputs(out_real, out_fake))
        norm = self._update(self.opt_d, D, loss, log["lr_d"])
        if norm is not None:
            log["grad_norm_d"] = norm

        if (step + 1) % m.n_critic == 0:
            z = torch.randn(len(real), m.latent_dim, generator=gen, device=device)
            D.requires_grad_(False)  # no parameter gradients for D from G's loss
            with self.autocast():
                loss_g = g_loss(m.loss, D(G(z, y), y))
            self.last_g = {"g_loss": loss_g.detach()}
            norm = self._update(self.opt_g, G, loss_g, log["lr"])
            if norm is not None:
                self.last_g["grad_norm_g"] = norm
            D.requires_grad_(True)
            ema_update(self.model.ema, G, m.ema_decay, step=step // m.n_critic)
        log.update(self.last_g)
        return StepResult(loss.detach(), torch.tensor(len(real)), log=log)

    def _d_outputs(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """D(x) and D(G(z)): probabilities for the logistic losses, raw outputs for the others."""
        if self.m.loss in ("minimax", "non_saturating"):
            real, fake = torch.sigmoid(real), torch.sigmoid(fake)
        return {"d_real": real.detach().mean(), "d_fake": fake.detach().mean()}

    def state_dict(self) -> dict:
        return {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["g"])
        self.opt_d.load_state_dict(state["d"])
