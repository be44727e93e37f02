"""The shared U-Net: a part with explicit arguments, in pixel or latent space, with class and
vector conditioning."""

from __future__ import annotations

import pytest
import torch

from components.models.unet import UNet


def _net(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(**{"in_channels": 1, "width": 16, "blocks": 1, "groups": 4, **kw})
    with torch.no_grad():  # the blocks' last convs and the output start at zero (identity blocks): make them speak
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("channels,size", [(1, 8), (4, 4), (3, 16)])
def test_the_output_has_the_inputs_shape_in_pixel_or_latent_space(channels, size):
    net = _net(in_channels=channels)
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_an_odd_resolution_is_refused_in_one_line():
    with pytest.raises(ValueError, match="must be even"):
        _net()(torch.randn(1, 1, 7, 7), torch.tensor([3]))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet(1, width=10, groups=4)


def test_the_step_the_class_and_the_condition_each_change_the_output():
    net = _net(num_classes=3, cond_dim=5)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    y, c = torch.tensor([0, 0]), torch.randn(2, 5)
    base = net(x, t, y, c)
    assert not torch.allclose(base, net(x, torch.tensor([900, 900]), y, c))
    assert not torch.allclose(base, net(x, t, torch.tensor([2, 2]), c))
    assert not torch.allclose(base, net(x, t, y, torch.randn(2, 5)))
    # no label is the "no class" index; a zero condition is no condition
    assert torch.equal(net(x, t, None, c), net(x, t, torch.tensor([3, 3]), c))
    assert torch.equal(net(x, t, y, torch.zeros(2, 5)), net(x, t, y, None))


def test_it_trains_the_simple_loss_down_on_one_batch():
    net = _net(in_channels=2).train()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x0, noise, t = torch.randn(8, 2, 4, 4), torch.randn(8, 2, 4, 4), torch.randint(0, 1000, (8,))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(net(x0 + noise, t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
