import pytest
import torch
from torch import nn

from components.config import OptimizerConfig
from components.models import resnet
from components.training import optim


def test_no_weight_decay_on_norm_and_bias():
    model = resnet.build(resnet.Config(depth=8))
    decay, no_decay = optim.param_groups(model, 0.1)
    bn_and_bias = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    bn_and_bias.add(id(model.fc.bias))
    assert bn_and_bias <= {id(p) for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert id(model.fc.weight) in {id(p) for p in decay["params"]}
    assert all(p.ndim > 1 for p in decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_each_optimizer_reduces_a_quadratic(name, cls):
    model = nn.Linear(4, 1)
    opt = optim.build(model, OptimizerConfig(name=name, weight_decay=0.0, nesterov=name == "sgd"), 0.05)
    assert isinstance(opt, cls)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    first = None
    for _ in range(50):
        loss = ((model(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_set_lr_changes_every_group():
    model = resnet.build(resnet.Config(depth=8))
    opt = optim.build(model, OptimizerConfig(), 0.1)
    optim.set_lr(opt, 0.003)
    assert [g["lr"] for g in opt.param_groups] == [0.003, 0.003]
