"""Every image family trains on images of another size than the digits' 8x8, taking size,
channels and classes from the shards: MNIST's 28x28x1 and CIFAR's 32x32x3, each written here
in its real format and run through ingest, preprocess and the training loop."""

from __future__ import annotations

import pytest

from components.config import (
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    parse,
    to_dict,
)
from components.data import images
from components.models import diffusion, gan, resnet, vae
from components.training import checkpoint as ckpt
from components.training.loop import train_loop_per_worker
from tests.components.data.test_images import write_cifar, write_mnist

MODELS = {
    "resnet": lambda: resnet.Config(depth=8, in_channels=0, image_size=0, num_classes=0),
    "gan": lambda: gan.Config(latent_dim=8, width=8, in_channels=0, image_size=0, num_classes=0),
    "vae": lambda: vae.Config(latent_dim=4, width=8, hidden=16, arch="conv", in_channels=0, image_size=0,
                              num_classes=0),
    "diffusion": lambda: diffusion.Config(width=16, blocks=1, groups=4, timesteps=20, val_steps=2, eval_steps=2,
                                          in_channels=0, image_size=0, num_classes=0),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("image-sizes")
    write_mnist(root / "mnist-src", 60, 20, gz=True)
    write_cifar(root / "cifar-src", per_batch=12)
    out = {}
    for name, section in (("mnist", {"source": "mnist", "path": str(root / "mnist-src")}),
                          ("cifar", {"source": "cifar10", "path": str(root / "cifar-src")})):
        cfg = parse(images.Config, {**section, "samples_per_shard": 32, "val_fraction": 0.2,
                                    "evaluator": {"epochs": 1, "width": 8, "feature_dim": 8}}, f"data.{name}")
        images.preprocess(cfg, root / name / "raw", root / name / "shards", images.ingest(cfg, root / name / "raw"))
        out[name] = root / name / "shards"
    return out


@pytest.mark.parametrize("dataset, shape", [("mnist", [1, 28, 28]), ("cifar", [3, 32, 32])])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_an_image_family_binds_to_the_data_and_trains(shards, tmp_path, family, dataset, shape):
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=16, log_every=1, schedule=ScheduleConfig(name="constant"),
                      optimizer=OptimizerConfig(name="adam", weight_decay=0.0))
    cfg.model = MODELS[family]()
    metrics = train_loop_per_worker({"algo": family, "train": to_dict(cfg), "data_dir": str(shards[dataset]),
                                     "run_dir": str(tmp_path)})
    assert all(v == v for v in metrics.values())  # nothing NaN
    _, meta = ckpt.load(ckpt.latest(tmp_path / "checkpoints"))
    bound = meta["config"]["model"]
    assert [bound["in_channels"], bound["image_size"], bound["image_size"]] == shape and bound["num_classes"] == 10
