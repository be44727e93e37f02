"""VAE: the KL in closed form, the reparameterisation, the ELBO's edge cases, annealing, the
IWAE bound on a trained model, and the serving modes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from components.config import ConfigError, parse
from components.data.shards import read_stats
from components.models import vae
from components.params import train_config


def cfg_of(**kw) -> vae.Config:
    return vae.Config(**{"latent_dim": 4, "hidden": 32, "width": 8, **kw})


def test_analytic_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.7, -1.2, 0.0]]), torch.tensor([[-0.5, 0.8, 0.0]])
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(400_000, 3)
    log_q = torch.distributions.Normal(mu, std).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    mc = (log_q - log_p).mean(0)
    assert torch.allclose(vae.kl_divergence(mu, logvar)[0], mc, atol=5e-3)
    assert vae.kl_divergence(torch.zeros(1, 2), torch.zeros(1, 2)).sum() == 0  # q = prior


def test_reparameterised_sample_has_the_right_mean_and_variance_and_carries_gradients():
    mu = torch.tensor([2.0, -1.0], requires_grad=True)
    logvar = torch.tensor([math.log(0.25), math.log(4.0)], requires_grad=True)
    z = vae.reparameterise(mu.expand(200_000, 2), logvar.expand(200_000, 2), torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), mu.detach(), atol=0.02)
    assert torch.allclose(z.var(0), torch.tensor([0.25, 4.0]), rtol=0.02)
    z.mean().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_elbo_of_a_perfect_bernoulli_decoder_is_minus_the_kl():
    model = vae.build(cfg_of(arch="mlp"))
    x = torch.randint(0, 2, (5, 1, 8, 8)).float()  # binary images: a perfect decoder gives them probability 1
    out = (x * 2 - 1) * 50  # logits of near-certain pixels
    assert model.log_likelihood(out, x).abs().max() < 1e-15 * 64 + 1e-12
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    kl = vae.kl_divergence(mu, logvar).sum(1)
    elbo = model.log_likelihood(out, x) - kl
    assert torch.allclose(elbo, -kl, atol=1e-10)


def test_gaussian_likelihood_is_the_normal_log_density():
    model = vae.build(cfg_of(arch="mlp", likelihood="gaussian", decoder_std=0.5))
    x, mean = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    want = torch.distributions.Normal(mean, 0.5).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(model.log_likelihood(mean, x), want, atol=1e-4)


def test_beta_zero_reduces_to_an_autoencoder_loss():
    torch.manual_seed(0)
    cfg = cfg_of(arch="mlp", beta=0.0, kl_anneal="none")
    model = vae.build(cfg)
    x = torch.rand(8, 1, 8, 8)
    torch.manual_seed(1)
    out = vae.training_step(model, (x, torch.zeros(8, dtype=torch.long)), cfg)
    torch.manual_seed(1)
    recon, _, _, _ = model(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(recon, x, reduction="none").flatten(1).sum(1).mean()
    assert out["loss"].item() == pytest.approx(bce.item(), rel=1e-6)
    assert out["log"]["kl_weight"] == 0.0 and out["log"]["kl"] > 0  # the KL is there, it just has no weight


@pytest.mark.parametrize("anneal, progress, want", [
    ("none", 0.0, 2.0), ("linear", 0.0, 0.0), ("linear", 0.15, 1.0), ("linear", 0.6, 2.0),
    ("cyclical", 0.0, 0.0), ("cyclical", 0.0625, 1.0), ("cyclical", 0.2, 2.0), ("cyclical", 0.25, 0.0),
])
def test_kl_weight_schedules(anneal, progress, want):
    cfg = cfg_of(beta=2.0, kl_anneal=anneal, kl_warmup=0.3, kl_cycles=4)
    assert vae.kl_weight(cfg, progress) == pytest.approx(want)


def test_the_adversarial_autoencoders_players_each_learn_only_from_their_own_loss():
    """The discriminator's loss reaches only its weights; the encoder's loss only the encoder's
    (not the decoder's, not the discriminator's); a conditional discriminator reads the class."""
    torch.manual_seed(0)
    cfg = vae.Config(arch="mlp", latent_dim=4, hidden=16, disc_hidden=8, prior="adversarial", conditional=True,
                     image_size=8, in_channels=1, num_classes=10)
    model = vae.build(cfg).train()
    assert model.discriminator[0].in_features == 4 + 10
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    _, _, _, losses = model(x, y)
    groups = {"encoder": [*model.encoder.parameters(), *model.to_stats.parameters()],
              "decoder": list(model.decoder.parameters()), "discriminator": list(model.discriminator.parameters())}
    for loss, learns in (("discriminator", {"discriminator"}), ("encoder", {"encoder"})):
        for group, params in groups.items():
            grads = torch.autograd.grad(losses[loss], params, retain_graph=True, allow_unused=True)
            moved = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert moved == (group in learns), (loss, group)
    step = vae.training_step(model, (x, y), cfg)
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(step["log"]) and torch.isfinite(step["loss"])
    assert model.eval()(x, y)[3] is None and vae.build(vae.Config(**{**cfg.__dict__, "prior": "gaussian"})).discriminator is None


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("conditional", [False, True])
def test_shapes_and_a_one_step_train(arch, conditional):
    cfg = cfg_of(arch=arch, conditional=conditional)
    model = vae.build(cfg)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    out = vae.training_step(model, (x, y), cfg, progress=0.5)
    out["loss"].backward()
    opt.step()
    assert math.isfinite(out["loss"].item()) and {"recon", "kl", "kl_weight"} <= set(out["log"])
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    mu, logvar = model.encode(x, y if conditional else None)
    assert mu.shape == logvar.shape == (6, 4)
    assert model.decode(mu, y if conditional else None).shape == (6, 1, 8, 8)


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3)])
def test_conv_vae_at_mnist_and_cifar_sizes(size, channels):
    model = vae.build(vae.Config(latent_dim=4, width=8, image_size=size, in_channels=channels))
    x = torch.rand(3, channels, size, size)
    mu, logvar = model.encode(x, None)
    assert mu.shape == (3, 4) and model.decode(mu, None).shape == (3, channels, size, size)
    with pytest.raises(ConfigError, match="at least 4"):
        parse(vae.Config, {"image_size": 2}, "train.vae.model")


@pytest.fixture(scope="module")
def trained(repo_params, digits_shards, tmp_path_factory):
    from components.config import to_dict
    from components.models import get_family
    from components.training.checkpoint import latest, load
    from components.training.loop import train_loop_per_worker

    raw = copy.deepcopy(repo_params)
    raw["train"]["vae"].update(epochs=15)
    cfg = train_config(raw, "vae")
    run_dir = tmp_path_factory.mktemp("vae")
    train_loop_per_worker({"algo": "vae", "train": to_dict(cfg), "data_dir": str(digits_shards), "run_dir": str(run_dir)})
    state, _ = load(latest(run_dir / "checkpoints"))
    model = get_family("vae").build(get_family("vae").bind(cfg.model, read_stats(digits_shards), digits_shards))
    model.load_state_dict(state["model"])
    return model, cfg.model


def test_trained_model_iwae_bounds_the_elbo_and_uses_its_latents(trained, digits_shards):
    model, cfg = trained
    result = vae.evaluate(model, cfg, digits_shards, "test")
    assert result["iwae"] >= result["elbo"]  # Burda et al.: the k-sample bound is at least the 1-sample one
    torch.manual_seed(0)
    untrained = vae.evaluate(vae.build(cfg), cfg, digits_shards, "test")
    assert result["elbo"] > untrained["elbo"] + 50  # nats per image: training did the work
    assert result["active_units"] >= 4  # KL annealing: no posterior collapse
    assert result["auroc_rotation"] > 0.7 and result["auroc_noise"] > 0.7
    assert result["fid_floor"] < result["fid"] < result["fid_ceiling"]


def test_pyfunc_modes_round_trip(trained):
    model, cfg = trained
    rows = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    mu = vae.predict(model, rows, cfg, mode="encode")
    assert mu.shape == (5, cfg.latent_dim)
    decoded = vae.predict(model, mu, cfg, mode="decode")
    rec = vae.predict(model, rows, cfg, mode="reconstruct")
    assert decoded.shape == rec.shape == (5, 8, 8) and np.allclose(decoded, rec, atol=1e-6)
    a = vae.predict(model, np.zeros((3, 1), np.float32), cfg, mode="sample", seed=4)
    b = vae.predict(model, np.zeros((3, 1), np.float32), cfg, mode="sample", seed=4)
    assert a.shape == (3, 8, 8) and np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1
    for bad, kw, match in [(rows[:, :10], {"mode": "encode"}, "rows of 64 pixels"),
                           (rows, {"mode": "decode"}, "latents of shape"),
                           (rows.astype(np.int64), {}, "float array"), (rows, {"mode": "dream"}, "mode must be")]:
        with pytest.raises((ValueError, TypeError), match=match):
            vae.predict(model, bad, cfg, **kw)
