"""CLIP: the symmetric InfoNCE, the clamped temperature, <eos> pooling, a training step, the
global-batch loss across two processes (values and gradients), evaluation and serving."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.config import ConfigError, parse
from components.data.tokenizer import BOS, EOS, Tokenizer
from components.models import clip, clip_eval, clip_loss

CAPTIONS = ["a bold seven", "a thin one", "the digit four, wide", "an upright zero", "a narrow two",
            "a photo of a bold nine", "three", "the number five drawn thin"]


def tiny_cfg(**kw) -> clip.Config:
    tok = Tokenizer.fit(CAPTIONS * 2, 60)
    base = dict(width=16, heads=2, embed_dim=8, image_layers=1, text_layers=1, max_len=12, vocab_size=len(tok),
                tokenizer=tok.to_dict(), class_names=["zero", "one"],
                zero_shot_templates=["an image of a {digit}", "this is a {digit}"])
    return clip.Config(**{**base, **kw})


def batch(n: int = 8, seed: int = 0, cfg: clip.Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = cfg or tiny_cfg()
    g = torch.Generator().manual_seed(seed)
    model = clip.build(cfg)
    return torch.rand(n, 1, 8, 8, generator=g), clip_eval.tokens_of(model, (CAPTIONS * 2)[:n])


def test_loss_is_cross_entropy_on_the_similarity_matrix_both_ways():
    g = torch.Generator().manual_seed(0)
    image, text = F.normalize(torch.randn(6, 4, generator=g), dim=1), F.normalize(torch.randn(6, 4, generator=g), dim=1)
    scale = torch.tensor(10.0)
    loss, logits = clip_loss.contrastive_loss(image, text, scale)
    sim = (image @ text.T) * 10
    manual_i2t = -torch.log_softmax(sim, 1).diagonal().mean()
    manual_t2i = -torch.log_softmax(sim, 0).diagonal().mean()
    assert torch.allclose(loss, (manual_i2t + manual_t2i) / 2, atol=1e-6) and torch.allclose(logits, sim)
    perfect = clip_loss.contrastive_loss(image, image, torch.tensor(100.0))[0]
    assert perfect < loss  # matched pairs lower it


def test_temperature_starts_at_007_and_is_clamped_at_100():
    model = clip.build(tiny_cfg())
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    scale = model.scale()
    assert float(scale.detach()) == pytest.approx(100.0)
    scale.backward()
    assert float(model.logit_scale.grad) == 0.0  # past the clamp, nothing pushes it further


def test_text_is_pooled_at_eos_and_never_sees_the_padding():
    torch.manual_seed(0)
    model = clip.build(tiny_cfg()).eval()
    tokens = clip_eval.tokens_of(model, ["a bold seven", "a thin one"])
    assert (tokens[:, 0] == BOS).all() and all(EOS in row.tolist() for row in tokens)
    base = model.encode_text(tokens)
    junk = tokens.clone()
    junk[junk == 0] = 5  # garbage after <eos>: causal attention and <eos> pooling ignore it
    assert torch.allclose(model.encode_text(junk), base, atol=1e-5)
    changed = tokens.clone()
    changed[0, 1] = 7  # a word before <eos> changes the embedding
    assert not torch.allclose(model.encode_text(changed)[0], base[0], atol=1e-4)
    assert torch.allclose(base.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("encoder", ["vit", "resnet"])
def test_training_steps_lower_the_loss(encoder):
    torch.manual_seed(0)
    cfg = tiny_cfg(image_encoder=encoder)
    model = clip.build(cfg)
    images, tokens = batch(cfg=cfg)
    opt = torch.optim.AdamW(model.parameters(), 5e-3)
    first = None
    for _ in range(60):
        out = clip.training_step(model, (images, tokens[:, None]), cfg)  # (B, K=1, L)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["loss"].detach())
    assert int(out["count"]) == 8 and out["log"]["global_batch"] == 8
    assert float(out["loss"].detach()) < first * 0.5  # 8 pairs: it learns to match them


def _ddp_worker(rank: int, world: int, store: str, path: str) -> None:
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    # A file rendezvous: no port to race other processes for (a TCP port picked free could be
    # taken by the time rank 0 binds it, and the group then waited forever).
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = DistributedDataParallel(clip.build(cfg))
    images, tokens = batch(7)
    part = slice(0, 4) if rank == 0 else slice(4, 7)  # unequal shares, as a rank may hold one sample more
    out = clip.training_step(model, (images[part], tokens[part]), cfg)
    out["loss"].backward()
    if rank == 0:
        torch.save({"loss": out["loss"].detach(), "count": int(out["count"]),
                    "grads": {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}}, path)
    # Tear down in step: both ranks done with their collectives, then the DDP wrapper (which holds
    # the group) gone before the group. Left to the frame's end, gloo's teardown could wait forever
    # for a peer that had already exited (1 run in 5 on a loaded 2-core machine).
    dist.barrier()
    del model, out
    dist.destroy_process_group()


def test_two_processes_compute_the_loss_and_gradients_of_the_concatenated_batch(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = clip.build(cfg)
    images, tokens = batch(7)
    single = clip.training_step(model, (images, tokens), cfg)
    single["loss"].backward()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "rank0.pt")), nprocs=2)
    ddp = torch.load(tmp_path / "rank0.pt")
    assert ddp["count"] == 7  # rank 0's logits span both workers' rows
    assert torch.allclose(ddp["loss"], single["loss"].detach(), atol=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ddp["grads"]) == set(grads)
    for name, g in grads.items():
        assert torch.allclose(ddp["grads"][name], g, atol=1e-6, rtol=1e-4), name


def test_config_and_bind_checks(tmp_path):
    with pytest.raises(ConfigError, match="patch_size: must divide image_size"):
        parse(clip.Config, {"patch_size": 3}, "train.clip.model")
    with pytest.raises(ConfigError, match="width .* divisible by heads"):
        parse(clip.Config, {"width": 30, "heads": 4}, "train.clip.model")
    with pytest.raises(ConfigError, match="needs an image-caption dataset"):
        clip.bind(clip.Config(), {"input_shape": [1, 8, 8]}, tmp_path)
    with pytest.raises(ConfigError, match="bind"):
        clip.build(clip.Config())


def test_predict_embeds_and_scores_and_rejects_bad_rows():
    import pandas as pd

    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = clip.build(cfg)
    images = np.random.default_rng(0).random((3, 64))
    frame = pd.DataFrame({"image": list(images), "text": ["a bold seven", "a thin one", "three"]})
    scores = clip.predict(model, frame, cfg)
    img = clip.predict(model, frame, cfg, mode="embed_image")
    txt = clip.predict(model, frame[["text"]], cfg, mode="embed_text")
    assert img.shape == (3, 8) and txt.shape == (3, 8) and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    assert np.allclose(scores, float(model.scale().detach()) * (img * txt).sum(1), atol=1e-4)
    with pytest.raises(ValueError, match=r"rows of 64 pixel values"):
        clip.predict(model, pd.DataFrame({"image": [np.zeros(10)]}), cfg, mode="embed_image")
    with pytest.raises(ValueError, match=r"mode 'score' needs column\(s\) \['text'\]"):
        clip.predict(model, frame[["image"]], cfg)
    with pytest.raises(ValueError, match="mode must be one of"):
        clip.predict(model, frame, cfg, mode="caption")
