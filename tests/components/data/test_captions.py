"""Captioned digits and image–caption WebDataset shards: attributes measured on the images,
captions from training templates only, tokens ending in <eos>, and jpg+txt shards read as written."""

from __future__ import annotations

import io

import numpy as np
import pytest
import webdataset as wds

from components.data import captions
from components.data.manifest import DataError
from components.data.registry import open_split
from components.data.shards import iter_shard, read_stats, tar_members
from components.data.tokenizer import EOS, Tokenizer


@pytest.fixture(scope="module")
def caption_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    cfg = captions.Config(captions_per_image=3, samples_per_shard=200)
    manifest = captions.ingest(cfg, root / "raw")
    captions.preprocess(cfg, root / "raw", root / "shards", manifest)
    return root / "shards"


def test_attributes_follow_the_pixels():
    blank = np.zeros((3, 1, 8, 8), np.float32)
    blank[0, 0, :, 3:5] = 1.0  # a thin upright bar
    blank[1, 0, :, 1:7] = 1.0  # a wide block
    for r in range(8):  # a stroke whose top is to the right: leans right
        blank[2, 0, r, 7 - r] = 1.0
    m = captions.measure(blank)
    assert m["ink"][1] > m["ink"][0] and m["width"][1] == 6 and m["width"][0] == 2
    assert abs(m["slant"][0]) < 1e-6 and m["slant"][2] < -0.5  # y grows downwards: negative leans right


def test_captions_name_the_digit_and_use_training_templates_only(caption_shards):
    stats = read_stats(caption_shards)
    assert stats["class_names"][7] == "seven" and stats["max_len"] == 16
    assert not set(stats["zero_shot_templates"]) & set(stats["train_templates"])
    tok = Tokenizer.load(caption_shards / "tokenizer.json")
    images, tokens, labels, first = next(iter(open_split(caption_shards, "train", batch_size=5000,
                                                           fields=("jpg;png;npy", "tokens.npy", "cls",
                                                                   "caption.txt"))))
    assert tokens.shape[1:] == (3, 16) and len(first) == len(labels) == images.shape[0]
    for i in range(0, len(labels), 97):
        texts = [tok.decode(row) for row in tokens[i]]
        assert texts[0] == first[i]
        assert all(captions.DIGIT_WORDS[int(labels[i])] in t for t in texts)
        assert all(EOS in row.tolist() for row in tokens[i])
    words = " ".join(first)
    for attribute in ("bold", "thin", "wide", "narrow", "right-leaning", "left-leaning", "upright"):
        assert attribute in words
    for template in stats["zero_shot_templates"]:
        stem = template.split("{digit}")[0].strip()
        assert stem and stem not in words  # e.g. "an image of the digit" never appears in training


def test_long_captions_are_cut_but_keep_eos():
    tok = Tokenizer.fit(["a b c d e f g h"] * 3, 20)
    ids = captions.encode(tok, ["a b c d e f g h"], 5)
    assert ids.shape == (1, 5) and ids[0, -1] == EOS


def write_webdataset(root, n_per_split: int = 6, size: int = 12):
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        with wds.TarWriter(str(root / f"{split}-000000.tar")) as sink:
            for i in range(n_per_split):
                pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG")
                sink.write({"__key__": f"{split}{i:04d}", "jpg": buf.getvalue(), "txt": f"a red {split} picture {i}",
                            "cls": i % 2})


def test_jpg_txt_shards_are_read_resized_and_tokenized(tmp_path):
    write_webdataset(tmp_path / "wds")
    cfg = captions.Config(source="webdataset", path=str(tmp_path / "wds"), image_size=8, channels=3,
                          samples_per_shard=4, vocab_size=60)
    manifest = captions.ingest(cfg, tmp_path / "raw")
    stats = captions.preprocess(cfg, tmp_path / "raw", tmp_path / "shards", manifest)
    assert stats["input_shape"] == [3, 8, 8] and stats["num_classes"] == 2
    images, tokens, labels, text = next(iter(open_split(tmp_path / "shards", "val", batch_size=100,
                                                          fields=("jpg;png;npy", "tokens.npy", "cls",
                                                                  "caption.txt"))))
    assert images.shape == (6, 3, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert sorted(text) == sorted(f"a red val picture {i}" for i in range(6)) and tokens.shape == (6, 1, 16)
    # the JPEGs' bytes pass through to the shards; the loader resizes them
    source = {m["data"] for tar in (tmp_path / "wds").glob("*.tar") for m in tar_members(open(tar, "rb"))
              if m["fname"].endswith(".jpg")}
    stored = [raw for e in stats["splits"]["train"]["shards"]
              for (raw,) in iter_shard(tmp_path / "shards" / e["file"], e, ("jpg",))]
    assert len(stored) == 6 and set(stored) <= source
    assert set(stats["source_sha256"]) == {"train-000000.tar", "val-000000.tar", "test-000000.tar"}


def test_missing_or_incomplete_webdataset_is_named(tmp_path):
    with pytest.raises(DataError, match=r"no train-\*.tar shards; expected WebDataset tars of jpg"):
        captions.ingest(captions.Config(source="webdataset", path=str(tmp_path)), tmp_path / "raw")
    for split in ("train", "val", "test"):
        with wds.TarWriter(str(tmp_path / f"{split}-000000.tar")) as sink:
            sink.write({"__key__": "x0", "txt": "no image here"})
    with pytest.raises(DataError, match=r"sample 'x0' has \['txt'\]; each needs an image"):
        captions.ingest(captions.Config(source="webdataset", path=str(tmp_path)), tmp_path / "raw")
