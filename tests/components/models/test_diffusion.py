"""Diffusion: the schedules against their formulas, the closed-form forward process, the reverse
steps, determinism of DDIM, guidance, one training step and the serving checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import ConfigError, parse
from components.models import diffusion
from components.models.diffusion_scheduler import NoiseScheduler
from tests.conftest import bound


def cfg_of(**kw) -> diffusion.Config:
    return diffusion.Config(**{"width": 16, "blocks": 1, "groups": 4, **kw})


def scheduler_of(cfg: diffusion.Config) -> NoiseScheduler:
    return NoiseScheduler(cfg.timesteps, cfg.schedule, cfg.beta_start, cfg.beta_end, cfg.cosine_s, cfg.prediction)


def test_linear_schedule_alpha_bar_is_the_product_of_one_minus_beta():
    sch = scheduler_of(cfg_of(schedule="linear"))
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(sch.alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-10)
    assert sch.betas[0].item() == pytest.approx(1e-4) and sch.betas[-1].item() == pytest.approx(0.02)
    assert sch.alpha_bar[-1].item() < 1e-4  # x_T is (almost) pure noise


def test_cosine_schedule_alpha_bar_follows_the_squared_cosine():
    s, T = 0.008, 1000
    sch = scheduler_of(cfg_of(schedule="cosine", cosine_s=s, timesteps=T))
    t = np.arange(1, T + 1)
    f = np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    # equal until beta hits its 0.999 clip at the very end
    assert np.allclose(sch.alpha_bar.numpy()[:-5], f[:-5], rtol=1e-8)
    assert (sch.betas <= 0.999).all()


def test_add_noise_has_the_closed_form_mean_and_variance():
    sch = scheduler_of(cfg_of())
    x0 = torch.full((200_000, 1, 1, 1), 0.6, dtype=torch.float64)
    t = torch.full((200_000,), 300)
    torch.manual_seed(0)
    xt = sch.add_noise(x0, torch.randn_like(x0), t)
    ab = sch.alpha_bar[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.6, abs=5e-3)
    assert xt.var().item() == pytest.approx(1 - ab, rel=1e-2)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_true_noise_recovers_x0_in_one_step(prediction):
    cfg = cfg_of(prediction=prediction)
    sch = scheduler_of(cfg)
    x0, noise = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1, torch.randn(4, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = sch.add_noise(x0, noise, t)
    eps, x0_hat = sch.to_eps_x0(sch.target(x0, noise, t), xt, t)  # a perfect denoiser's output
    assert torch.allclose(x0_hat, x0, atol=1e-8) and torch.allclose(eps, noise, atol=1e-8)
    assert torch.allclose(sch.ddim_step(eps, x0_hat, -1), x0)  # DDIM's last step lands on x0
    # and the ancestral step's mean equals the posterior mean of q(x_{t-1} | x_t, x_0)
    k = 500
    b, a, ab, ab_prev = sch.betas[k], sch.alphas[k], sch.alpha_bar[k], sch.alpha_bar[k - 1]
    posterior = (ab_prev.sqrt() * b / (1 - ab)) * x0[2:3] + (a.sqrt() * (1 - ab_prev) / (1 - ab)) * xt[2:3]
    assert torch.allclose(sch.step(noise[2:3], xt[2:3], k, None), posterior, atol=1e-8)


def test_ddim_is_deterministic_for_a_seed_and_ddpm_is_stochastic_per_seed():
    torch.manual_seed(0)
    model = diffusion.build(cfg_of(timesteps=50))
    y = torch.tensor([1, 2, 3])
    a = model.sample(3, seed=7, labels=y, steps=10, sampler="ddim")
    assert torch.equal(a, model.sample(3, seed=7, labels=y, steps=10, sampler="ddim"))
    assert not torch.equal(a, model.sample(3, seed=8, labels=y, steps=10, sampler="ddim"))
    b = model.sample(3, seed=7, labels=y, sampler="ddpm")
    assert torch.equal(b, model.sample(3, seed=7, labels=y, sampler="ddpm")) and a.shape == b.shape == (3, 1, 8, 8)
    assert not torch.equal(b, model.sample(3, seed=8, labels=y, sampler="ddpm"))  # another seed, other samples
    assert a.min() >= 0 and a.max() <= 1
    assert scheduler_of(cfg_of()).timesteps_for(50)[::49] == [999, 0]


def test_guidance_extrapolates_from_the_unconditional_output():
    torch.manual_seed(0)
    model = diffusion.build(cfg_of())
    torch.nn.init.normal_(model.denoiser.out[-1].weight)  # a non-zero output layer
    torch.nn.init.normal_(model.denoiser.classes.weight)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([100, 100]), torch.tensor([3, 5])
    net = model.denoiser.eval()
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 10))
    assert torch.allclose(model.guided(net, x, t, y, 1.0), cond, atol=1e-5)
    assert torch.allclose(model.guided(net, x, t, y, 3.0), uncond + 3 * (cond - uncond), atol=1e-5)


def test_one_training_step_and_the_ema(repo_params):
    import copy

    from components.params import train_config

    raw = copy.deepcopy(repo_params)
    raw["train"]["diffusion"]["model"].update(width=16, groups=4)
    cfg = train_config(raw, "diffusion")
    cfg.model = bound(cfg.model)
    model = diffusion.build(cfg.model)
    step = diffusion.Step(model, cfg, diffusion, total_steps=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = step((torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))), 0)
    assert math.isfinite(out.log["loss"])
    after = model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("denoiser."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("ema."))


def test_config_checks():
    with pytest.raises(ConfigError, match="divisible"):
        parse(diffusion.Config, {"width": 20, "groups": 8}, "train.diffusion.model")
    with pytest.raises(ConfigError, match="beta_end"):
        parse(diffusion.Config, {"schedule": "linear", "beta_start": 0.02, "beta_end": 0.01}, "train.diffusion.model")


def test_predict_takes_rows_and_sampler_params_and_rejects_bad_ones():
    cfg = cfg_of(timesteps=20)
    model = diffusion.build(cfg)
    req = pd.DataFrame({"count": [2, 1], "seed": [0, 1], "label": [4, -1]})
    a = diffusion.predict(model, req, cfg, steps=5)
    assert a.shape == (3, 8, 8) and a.dtype == np.float32
    assert np.array_equal(a, diffusion.predict(model, req, cfg, steps=5))
    assert diffusion.predict(model, req, cfg, sampler="ddpm", guidance_scale=1.0).shape == (3, 8, 8)
    for kw, match in [({"sampler": "euler"}, "sampler must"), ({"steps": 0}, "steps must"),
                      ({"guidance_scale": -1.0}, "guidance_scale")]:
        with pytest.raises(ValueError, match=match):
            diffusion.predict(model, req, cfg, **kw)
    with pytest.raises(ValueError, match="label must"):
        diffusion.predict(model, {"count": 1, "seed": 0, "label": 11}, cfg)
