"""The VGG-style family: docs/pipeline.md's worked example of a new family, its config, its
``build`` and the image-classification task (``components/tasks/image_classification.py``)."""

import pytest
import torch

from components.config import ConfigError, parse
from components.models import contract, get_family, vgg
from tests.conftest import REPO


def test_the_vgg16_convolutions_have_the_published_parameter_count():
    cfg = vgg.Config(widths=[64, 128, 256, 512, 512], convs=[2, 2, 3, 3, 3], batch_norm=False, in_channels=3,
                     image_size=224, num_classes=1000)
    model = vgg.build(cfg)
    convs = sum(p.numel() for m in model if isinstance(m, torch.nn.Conv2d) for p in m.parameters())
    assert convs == 14_714_688  # Simonyan & Zisserman's configuration D: its 13 conv layers (torchvision's too)
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("kw", [dict(), dict(batch_norm=False, dropout=0.5), dict(widths=[16], convs=[3])])
def test_a_step_trains_digits_and_cifar_sizes(kw):
    for channels, size in ((1, 8), (3, 32)):
        cfg = vgg.Config(in_channels=channels, image_size=size, num_classes=10, **kw)
        model = vgg.build(cfg)
        x = torch.rand(4, channels, size, size)
        out = vgg.training_step(model, (x, torch.tensor([0, 1, 2, 3])), cfg)
        out["loss"].backward()
        assert model(x).shape == (4, 10) and int(out["count"]) == 4
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model) == cfg.batch_norm


def test_a_config_that_does_not_fit_says_which_key_to_change():
    with pytest.raises(ConfigError, match="convs: one positive convolution count per stage"):
        parse(vgg.Config, {"widths": [8, 16], "convs": [2]}, "train.vgg.model")
    with pytest.raises(ConfigError, match="at most 4 stages"):
        vgg.bind(vgg.Config(widths=[8] * 5, convs=[1] * 5), {"num_classes": 10, "input_shape": [1, 8, 8]}, None)


def test_a_new_family_on_the_shared_task_is_one_short_file_that_meets_the_contract():
    assert contract.problems(get_family("vgg")) == []
    lines = (REPO / "components/models/vgg.py").read_text().count("\n")
    assert lines <= 150, f"components/models/vgg.py has {lines} lines"
    usage = vgg.usage("v", vgg.bind(vgg.Config(), {"num_classes": 100, "input_shape": [3, 32, 32]}, None))
    assert "(N, 3, 32, 32)" in usage and "(N, 100)" in usage
