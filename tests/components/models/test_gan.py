"""GAN: losses on known inputs, gradient penalty, spectral norm, conditioning, the two-optimizer
step, EMA, and the serving input checks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import ConfigError, parse
from components.models import gan, gan_step
from components.models.common import ema_update
from components.params import train_config
from tests.conftest import bound


def model_cfg(**kw) -> gan.Config:
    return gan.Config(**{"latent_dim": 8, "width": 8, **kw})


@pytest.fixture
def train_cfg(repo_params):
    raw = copy.deepcopy(repo_params)
    raw["train"]["gan"]["model"].update(latent_dim=8, width=8)
    cfg = train_config(raw, "gan")
    cfg.model = bound(cfg.model)
    return cfg


def test_minimax_value_at_d_one_half_everywhere_is_minus_two_log_two():
    half = torch.zeros(16)  # logit 0 -> D = 1/2
    value = -gan_step.d_loss("minimax", half, half)  # V(D, G) = E log D(x) + E log(1 - D(G(z)))
    assert value.item() == pytest.approx(-2 * math.log(2))
    assert gan_step.g_loss("minimax", half).item() == pytest.approx(-math.log(2))  # E log(1 - 1/2)
    assert gan_step.g_loss("non_saturating", half).item() == pytest.approx(math.log(2))  # -E log 1/2


def test_the_non_saturating_loss_keeps_a_gradient_where_minimax_saturates():
    grads = {}
    for kind in ("minimax", "non_saturating"):
        logit = torch.tensor([-10.0], requires_grad=True)  # D is sure the sample is fake
        gan_step.g_loss(kind, logit).backward()
        grads[kind] = abs(logit.grad.item())
    assert grads["minimax"] < 1e-4 and grads["non_saturating"] > 0.99


def test_least_squares_hinge_and_wasserstein_losses_on_known_outputs():
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, -0.5])
    assert gan_step.d_loss("least_squares", real, fake).item() == pytest.approx(0.5 * 0.125 + 0.5 * 0.125)
    assert gan_step.g_loss("least_squares", fake).item() == pytest.approx(0.5 * (1 + 2.25) / 2)
    assert gan_step.d_loss("hinge", real, fake).item() == pytest.approx(0.25 + 0.75)
    assert gan_step.d_loss("hinge", torch.tensor([2.0]), torch.tensor([-2.0])).item() == 0.0  # beyond the margin
    assert gan_step.d_loss("wgan_gp", real, fake).item() == pytest.approx(-0.25 - 0.75)
    assert gan_step.g_loss("hinge", fake).item() == pytest.approx(0.25)
    # one-sided label smoothing moves only the real target
    smoothed = gan_step.d_loss("minimax", torch.zeros(4), torch.zeros(4), real_target=0.9)
    assert smoothed.item() == pytest.approx(2 * math.log(2))  # BCE at p = 1/2 is log 2 for any target


def test_gradient_penalty_of_a_linear_critic_is_the_squared_distance_of_its_norm_from_one():
    w = torch.tensor([2.0, -2.0, 1.0])  # ||w|| = 3: the gradient is w everywhere
    real, fake = torch.randn(32, 3), torch.randn(32, 3)
    gp = gan_step.gradient_penalty(lambda x: x @ w, real, fake)
    assert gp.item() == pytest.approx((3 - 1) ** 2)
    unit = w / 3
    assert gan_step.gradient_penalty(lambda x: x @ unit, real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_spectral_norm_bounds_the_largest_singular_value_of_every_discriminator_layer():
    torch.manual_seed(0)
    d = gan.Discriminator(model_cfg(width=16, spectral_norm=True))
    for _ in range(30):  # power iterations run in training mode
        d(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    sigmas = []
    for module in d.modules():
        if hasattr(module, "parametrizations"):
            w = module.weight.detach()
            sigmas.append(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item())
    assert len(sigmas) == 5 and max(sigmas) == pytest.approx(1.0, abs=0.05)
    plain = gan.Discriminator(model_cfg(width=16, spectral_norm=False))
    w = plain.body[0].weight.detach()
    assert torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item() != pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("size, base, ups", [(4, 4, 0), (8, 4, 1), (16, 4, 2), (32, 4, 3), (28, 7, 2)])
def test_dcgan_networks_are_sized_by_the_image_size(size, base, ups):
    cfg = model_cfg(image_size=size, in_channels=3)
    g, d = gan.Generator(cfg), gan.Discriminator(cfg)
    y = torch.randint(0, 10, (5,))
    x = g(torch.randn(5, cfg.latent_dim), y)
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1
    assert d(x, y).shape == (5,)
    assert len(g.ups) == ups and cfg.base == base


def test_image_size_is_at_least_four():
    with pytest.raises(ConfigError, match="at least 4"):
        parse(gan.Config, {"image_size": 3}, "train.gan.model")


def test_conditioning_reaches_both_networks():
    torch.manual_seed(0)
    cfg = model_cfg()
    g, d = gan.Generator(cfg), gan.Discriminator(cfg)
    for norm in g.norms:  # away from the identity initialisation
        torch.nn.init.normal_(norm.gain.weight, 1, 0.5)
    g.eval()
    z, x = torch.randn(4, cfg.latent_dim), torch.rand(4, 1, 8, 8)
    assert not torch.allclose(g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.ones(4, dtype=torch.long)))
    assert not torch.allclose(d(x, torch.zeros(4, dtype=torch.long)), d(x, torch.ones(4, dtype=torch.long)))


@pytest.mark.parametrize("loss", gan_step.LOSSES)
def test_one_step_updates_both_networks_and_the_ema(train_cfg, loss):
    train_cfg.model.loss = loss
    torch.manual_seed(0)
    model = gan.build(train_cfg.model)
    before = copy.deepcopy(model.state_dict())
    step = gan.Step(model, train_cfg, gan, total_steps=10)
    batch = (torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    out = step(batch, 0)
    assert all(math.isfinite(v) for v in out.log.values())
    assert {"loss", "g_loss", "d_real", "d_fake", "lr", "lr_d"} <= set(out.log)
    assert ("gradient_penalty" in out.log) == (loss == "wgan_gp")
    after = model.state_dict()
    for prefix in ("generator.", "discriminator.", "ema."):
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(after[k], before[k])]
        assert changed, f"{prefix} did not change"


def test_n_critic_updates_the_generator_every_nth_step_only(train_cfg):
    train_cfg.model.n_critic = 2
    model = gan.build(train_cfg.model)
    step = gan.Step(model, train_cfg, gan, total_steps=10)
    batch = (torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    g0 = copy.deepcopy(model.generator.state_dict())
    step(batch, 0)
    assert all(torch.equal(v, g0[k]) for k, v in model.generator.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    step(batch, 1)
    assert any(not torch.equal(v, g0[k]) for k, v in model.generator.state_dict().items())


def test_two_optimizers_follow_their_own_learning_rates(train_cfg):
    train_cfg.model.d_lr_scale = 4.0
    step = gan.Step(gan.build(train_cfg.model), train_cfg, gan, total_steps=10)
    out = step((torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))), 0)
    assert out.log["lr_d"] == pytest.approx(4 * out.log["lr"])
    assert step.opt_d.param_groups[0]["lr"] == pytest.approx(4 * step.opt_g.param_groups[0]["lr"])
    state = step.state_dict()
    fresh = gan.Step(gan.build(train_cfg.model), train_cfg, gan, total_steps=10)
    fresh.load_state_dict(state)
    assert fresh.opt_d.state_dict()["state"].keys() == step.opt_d.state_dict()["state"].keys()


def test_ema_is_the_exponential_moving_average_of_the_generator():
    model = gan.build(model_cfg())
    e0 = [p.clone() for p in model.ema.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    ema_update(model.ema, model.generator, 0.9)
    for e, p, old in zip(model.ema.parameters(), model.generator.parameters(), e0):
        assert torch.allclose(e, 0.9 * old + 0.1 * p)


def test_predict_returns_seeded_images_of_the_requested_classes_and_rejects_bad_requests():
    cfg = model_cfg()
    model = gan.build(cfg)
    req = pd.DataFrame({"count": [3, 2], "seed": [0, 1], "label": [4, -1]})
    a, b = gan.predict(model, req, cfg), gan.predict(model, req, cfg)
    assert a.shape == (5, 8, 8) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b)  # a seed is a seed
    assert not np.array_equal(a[:2], gan.predict(model, {"count": 2, "seed": 5, "label": 4}, cfg))
    for bad, match in [({"count": 0, "seed": 0}, "count must be"), ({"count": 2, "seed": 0, "label": 10}, "label must"),
                       ({"count": 2}, "missing column"), ("ten images", "expected a DataFrame")]:
        with pytest.raises((ValueError, TypeError), match=match):
            gan.predict(model, bad, cfg)
    uncond = model_cfg(conditional=False)
    with pytest.raises(ValueError, match="unconditional"):
        gan.predict(gan.build(uncond), {"count": 2, "seed": 0, "label": 3}, uncond)


def _worker(rank: int, world: int, store: str, cfg, out: dict) -> None:
    import datetime

    # A file rendezvous (no free port to race for), as in test_clip's two-process test.
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    torch.manual_seed(0)  # identical initial weights, as the loop does
    model = gan.build(cfg.model)
    step = gan.Step(model, cfg, gan, total_steps=10)
    step.distribute(world)
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees different images
    for i in range(3):
        step((torch.rand(8, 1, 8, 8, generator=data), torch.randint(0, 10, (8,), generator=data)), i)
    out[rank] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.distributed.barrier()  # tear down in step (see test_clip._ddp_worker)
    del step, model
    torch.distributed.destroy_process_group()


def test_two_workers_stay_in_sync_through_the_gradient_penalty(train_cfg, tmp_path):
    """Gradients are averaged explicitly (DDP cannot follow WGAN-GP's double backward): after
    steps on different data, both ranks hold the same weights and BatchNorm statistics."""
    import torch.multiprocessing as mp

    train_cfg.model.loss = "wgan_gp"
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "store"), train_cfg, out), nprocs=2)
        a, b = out[0], out[1]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    fresh = gan.build(train_cfg.model).state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)  # and they did train
