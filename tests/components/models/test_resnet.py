import numpy as np
import pytest
import torch

from components.config import ConfigError, parse
from components.models import resnet


def n_params(cfg: resnet.Config) -> int:
    return sum(p.numel() for p in resnet.build(cfg).parameters())


@pytest.mark.parametrize("depth, groups, wpg, width, expected", [
    (18, 1, 64, 1.0, 11_689_512),   # He et al. 2016, torchvision resnet18
    (50, 1, 64, 1.0, 25_557_032),   # resnet50
    (50, 32, 4, 1.0, 25_028_904),   # ResNeXt-50 32x4d (Xie et al. 2017)
    (50, 1, 64, 2.0, 68_883_240),   # Wide ResNet-50-2
])
def test_imagenet_parameter_counts_match_published(depth, groups, wpg, width, expected):
    cfg = resnet.Config(style="imagenet", depth=depth, groups=groups, width_per_group=wpg, width=width,
                        in_channels=3, num_classes=1000, image_size=224)
    assert n_params(cfg) == expected


def test_cifar_resnet20_has_027m_parameters():
    assert n_params(resnet.Config(depth=20, in_channels=3)) == 272_474  # "0.27M" in the paper's Table 6


@pytest.mark.parametrize("kw", [
    dict(depth=20), dict(depth=32, preact=True), dict(depth=29, block="bottleneck", groups=4, width_per_group=16),
    dict(depth=20, tweaks=["C", "D"]), dict(depth=29, block="bottleneck", tweaks=["B", "D"]), dict(depth=14, width=2.0),
    dict(depth=18, style="imagenet", tweaks=["B", "C", "D"], image_size=32), dict(depth=20, dropout=0.2),
])
def test_variants_forward_and_backward(kw):
    cfg = resnet.Config(**kw)
    model = resnet.build(cfg)
    x = torch.randn(4, 1, cfg.image_size, cfg.image_size)  # (B, C, H, W)
    out = resnet.training_step(model, (x, torch.tensor([0, 1, 2, 3])), cfg)
    out["loss"].backward()
    assert model(x).shape == (4, 10)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tweak_d_average_pools_in_the_shortcut_and_b_moves_the_stride():
    model = resnet.build(resnet.Config(depth=50, style="imagenet", tweaks=["B", "D"], in_channels=3))
    block = model.stages[1][0]
    assert isinstance(block.shortcut[0], torch.nn.AvgPool2d)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    plain = resnet.build(resnet.Config(depth=50, style="imagenet", in_channels=3)).stages[1][0]
    assert plain.conv1.stride == (2, 2) and plain.conv2.stride == (1, 1)


def test_zero_init_residual_makes_every_block_start_as_identity():
    cfg = resnet.Config(depth=20, zero_init_residual=True)
    model = resnet.build(cfg).eval()
    block = model.stages[0][1]  # no projection: y = relu(F(x) + x) = relu(x) with F = 0
    x = torch.rand(2, 16, 8, 8)
    assert torch.allclose(block(x), x)


def test_he_initialisation_variance():
    model = resnet.build(resnet.Config(depth=56))
    w = model.stages[2][0].conv1.weight  # fan_out = 64 * 3 * 3
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


@pytest.mark.parametrize("kw, message", [
    (dict(depth=21), r"6n\+2"), (dict(style="imagenet", depth=20), "ImageNet-style depths"),
    (dict(preact=True, zero_init_residual=True), "pre-activation"), (dict(groups=8), "bottleneck"),
])
def test_invalid_configs_explain_themselves(kw, message):
    with pytest.raises(ConfigError, match=message):
        parse(resnet.Config, kw, "train.resnet.model")


def test_predict_returns_probabilities_and_rejects_bad_input():
    cfg = resnet.Config(depth=8)
    model = resnet.build(cfg)
    probs = resnet.predict(model, np.random.rand(5, 8, 8).astype(np.float32), cfg)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert resnet.predict(model, np.random.rand(3, 1, 8, 8).astype(np.float32), cfg).shape == (3, 10)
    with pytest.raises(ValueError, match=r"shape \(N, 8, 8\) or \(N, 1, 8, 8\), got \(5, 64\)"):
        resnet.predict(model, np.zeros((5, 64), np.float32), cfg)
    with pytest.raises(TypeError, match="expected a float array"):
        resnet.predict(model, np.zeros((5, 8, 8), np.int64), cfg)


def test_random_shift_moves_content_by_at_most_the_shift():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1
    moved = resnet.random_shift(x, 1, torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(moved[:, 0], as_tuple=True)[1:]
    assert set(ys.tolist()) <= {3, 4, 5} and set(xs.tolist()) <= {3, 4, 5}
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 1


# ---------------------------------------------------------------------------- arch: vit


def test_vit_classifier_is_clips_image_tower_with_a_class_head():
    from components.models import clip

    cfg = resnet.Config(arch="vit", in_channels=3, image_size=32, patch_size=4, vit_width=32, vit_layers=2,
                        vit_heads=4, num_classes=7, dropout=0.1)
    cfg.validate()
    model = resnet.build(cfg)
    x = torch.rand(5, 3, 32, 32)
    out = resnet.training_step(model, (x, torch.arange(5)), cfg)
    out["loss"].backward()
    assert model(x).shape == (5, 7) and model.vit.pos.shape == (8 * 8 + 1, 32)
    assert all(p.grad is not None for p in model.parameters())
    # the same tower, parameter for parameter, as CLIP's with that width, depth and patch size
    tower = clip.build(clip.Config(image_size=32, in_channels=3, patch_size=4, width=32, image_layers=2, heads=4,
                                   embed_dim=7, vocab_size=10, max_len=4)).visual
    ours = {k: v.shape for k, v in model.vit.state_dict().items() if k != "proj.bias"}
    assert ours == {k: v.shape for k, v in tower.state_dict().items()}
    assert "fc.weight" not in model.state_dict() and {"mean", "inv_std"} <= set(model.state_dict())


def test_vit_keys_are_checked_and_resnet_keys_ignored():
    with pytest.raises(ConfigError, match="patch_size: must divide image_size"):
        resnet.Config(arch="vit", image_size=8, patch_size=3).validate()
    with pytest.raises(ConfigError, match="vit_heads"):
        resnet.Config(arch="vit", vit_width=30, vit_heads=4).validate()
    resnet.Config(arch="vit", depth=21).validate()  # not a CIFAR depth, and not read
    with pytest.raises(ConfigError, match="arch"):
        parse(resnet.Config, {"arch": "vgg"}, "model")
