"""The family contract (components/models/contract.py): every registered family meets it, a
family that forgets a piece is named with what it forgot, and every family runs through the
whole contract on tiny data: bind -> build -> a training epoch -> evaluate -> report -> predict."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from components.config import OptimizerConfig, ScheduleConfig, TrainConfig, to_dict
from components.models import (
    FAMILIES,
    clip,
    contract,
    diffusion,
    gan,
    get_family,
    gnn,
    resnet,
    vae,
    vgg,
)
from components.models import transformer as T
from components.models.contract import Report
from components.params import train_config_from_dict
from components.training import checkpoint as ckpt
from components.training.loop import train_loop_per_worker


def test_every_registered_family_meets_the_contract():
    for name in FAMILIES:
        family = get_family(name)
        assert contract.problems(family) == [], name
        assert family.PRIMARY_MODE in contract.MODES and family.VAL_METRIC.startswith("val_")


def throwaway(**changes) -> types.ModuleType:
    """A copy of the ResNet family with ``changes`` (None deletes a name)."""
    module = types.ModuleType("components.models.throwaway")
    module.__dict__.update({k: v for k, v in vars(resnet).items() if not k.startswith("__")})
    for key, value in changes.items():
        if value is None:
            delattr(module, key)
        else:
            setattr(module, key, value)
    return module


def test_a_family_that_forgets_a_piece_is_named_with_it(monkeypatch):
    assert contract.problems(throwaway()) == []
    found = contract.problems(throwaway(eval_step=None, usage=None, VAL_MODE="maximum"))
    assert "lacks usage" in found and "lacks eval_step (or validate)" in found
    assert any(p.startswith("VAL_MODE is 'maximum'") for p in found)
    wrong = contract.problems(throwaway(training_step=lambda model, batch: None))
    assert len(wrong) == 1 and wrong[0].startswith("training_step(model, batch) cannot take the pipeline's call")
    # Registered, it fails when loaded, naming the family and what it lacks.
    monkeypatch.setitem(sys.modules, "components.models.throwaway", throwaway(report=None))
    monkeypatch.setitem(FAMILIES, "throwaway", "components.models.throwaway")
    with pytest.raises(TypeError, match=r"family 'throwaway' .* does not meet the family contract.*lacks report"):
        get_family("throwaway")


# ---------------------------------------------------------------------------- end to end, tiny

IMAGE = {"in_channels": 0, "image_size": 0, "num_classes": 0}
TINY = {  # family -> (its tiny model config, the data fixture it trains on)
    "resnet": (lambda: resnet.Config(depth=8), "digits_shards"),
    "gan": (lambda: gan.Config(latent_dim=8, width=8, **IMAGE), "digits_shards"),
    "vae": (lambda: vae.Config(latent_dim=4, width=8, hidden=16, arch="conv", **IMAGE), "digits_shards"),
    "diffusion": (lambda: diffusion.Config(width=16, blocks=1, groups=4, timesteps=20, val_steps=2, eval_steps=2,
                                           sweep=["ddim2"], **IMAGE), "digits_shards"),
    "transformer": (lambda: T.Config(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, d_ff=64, dropout=0.0),
                    "number_shards"),
    "gnn": (lambda: gnn.Config(hidden=8, heads=2), "community_shards"),
    "clip": (lambda: clip.Config(width=16, heads=2, embed_dim=8, image_layers=1, text_layers=1), "caption_shards"),
    "vgg": (lambda: vgg.Config(widths=[8, 16], convs=[1, 1]), "digits_shards"),
}
VARIANTS = {  # <family>/<variant>: a family's config option that builds another network, run as TINY's
    "resnet/vit": (lambda: resnet.Config(arch="vit", vit_width=16, vit_layers=1, vit_heads=2), "digits_shards"),
    "transformer/decoder_only": (lambda: T.Config(arch="decoder_only", d_model=16, heads=2, decoder_layers=1,
                                                   d_ff=32, dropout=0.0, beam_size=2), "number_shards"),
    "gnn/hetero": (lambda: gnn.Config(hidden=8, conv="sage", hetero=True), "typed_shards"),
    "vae/adversarial": (lambda: vae.Config(latent_dim=4, width=8, hidden=16, arch="conv", prior="adversarial",
                                           disc_hidden=16, **IMAGE), "digits_shards"),
}


@pytest.fixture(scope="module")
def number_shards(tmp_path_factory) -> Path:
    from components.data import translation

    root = tmp_path_factory.mktemp("numbers")
    cfg = translation.Config(num_train=300, num_val=40, num_test=40, max_digits=3, vocab_size=80, samples_per_shard=100)
    translation.preprocess(cfg, root / "raw", root / "shards", translation.ingest(cfg, root / "raw"))
    return root / "shards"


@pytest.fixture(scope="module")
def caption_shards(tmp_path_factory) -> Path:
    from components.data import captions

    root = tmp_path_factory.mktemp("captions")
    cfg = captions.Config(captions_per_image=2, samples_per_shard=400)
    captions.preprocess(cfg, root / "raw", root / "shards", captions.ingest(cfg, root / "raw"))
    return root / "shards"


def test_the_tiny_configs_cover_every_registered_family():
    assert sorted(TINY) == sorted(FAMILIES)  # a new family adds its line here


@pytest.mark.parametrize("case", sorted([*TINY, *VARIANTS]))
def test_a_family_runs_through_the_whole_contract_on_tiny_data(case, request, tmp_path):
    name = case.split("/")[0]
    family = get_family(name)
    make_model, data = {**TINY, **VARIANTS}[case]
    shards = request.getfixturevalue(data)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=32, log_every=1, schedule=ScheduleConfig(name="constant"),
                      optimizer=OptimizerConfig(name="adam", weight_decay=0.0))
    cfg.model = make_model()
    metrics = train_loop_per_worker({"algo": name, "train": to_dict(cfg), "data_dir": str(shards),
                                     "run_dir": str(tmp_path / "run")})  # bind, build, training and val steps
    assert family.VAL_METRIC in metrics and metrics["step"] > 0

    state, meta = ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))
    bound = train_config_from_dict(name, meta["config"]).model  # the bound config, as a checkpoint keeps it
    if "/" in case:  # the variant survives the checkpoint's config
        variant = case.split("/")[1]
        assert variant in to_dict(bound).values() or to_dict(bound).get(variant) is True
    model = family.build(bound)
    model.load_state_dict(state["model"])
    model.eval()
    result = family.evaluate(model, bound, shards, "test", detail=True)  # what the evaluate stage reports
    assert family.PRIMARY_METRIC in result and all(metric in result for metric, _ in family.SELECT_BY)
    report = family.report(result, "test", "tiny", "plots/eval/x")
    assert isinstance(report, Report) and report.markdown.startswith("## test")
    assert report.figures and all(name.endswith("_tiny.png") and isinstance(fig, Figure)
                                  for name, fig in report.figures.items())
    assert not list(tmp_path.rglob("*.png"))  # report writes nothing; the evaluate stage writes the figures
    example = family.serving_example(bound)
    out = family.predict(model, example, bound)
    assert len(out) > 0
    assert isinstance(family.usage(name, bound), str) and family.signature(bound) is not None


def test_usage_speaks_of_the_bound_data_not_of_the_embedded_digits():
    cifar = {"in_channels": 3, "image_size": 32, "num_classes": 100}
    assert "(N, 3, 32, 32)" in resnet.usage("r", resnet.Config(**cifar)) and "(N, 100)" in resnet.usage(
        "r", resnet.Config(**cifar))
    assert "(16, 3, 32, 32)" in gan.usage("g", gan.Config(**cifar))
    assert "(16, 28, 28)" in diffusion.usage("d", diffusion.Config(in_channels=1, image_size=28, num_classes=10))
    assert "reshape(n, 3072)" in vae.usage("v", vae.Config(**cifar))
