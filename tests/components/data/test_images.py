"""The images dataset: every source format on tiny files written here in that format, encoded
shards, the loader-side transforms, streaming with bounded memory, and the bad inputs."""

from __future__ import annotations

import gzip
import io
import pickle
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.config import ConfigError, parse
from components.data import images, transforms
from components.data.manifest import DataError, verify_manifest
from components.data.registry import open_split
from components.data.shards import ShardDataset, iter_shard, read_stats
from components.data.writer import write_shards


def build(tmp_path: Path, **cfg) -> tuple[Path, dict, dict]:
    """ingest + preprocess of ``data.<name>`` = ``cfg``; (shard dir, stats, manifest)."""
    config = parse(images.Config, cfg, "data.test")
    manifest = images.ingest(config, tmp_path / "raw")
    stats = images.preprocess(config, tmp_path / "raw", tmp_path / "shards", manifest)
    return tmp_path / "shards", stats, manifest


def smooth_images(n: int, c: int, size: int, seed: int) -> np.ndarray:
    """Image-like uint8 (n, c, size, size): smooth random fields, not white noise."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, c, 4, 4)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size), mode="bilinear")
    return up.clamp(0, 255).round().to(torch.uint8).numpy()


def encode(array: np.ndarray, fmt: str) -> bytes:
    """(C, H, W) uint8 as an image file's bytes."""
    img = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_cifar(root: Path, per_batch: int, cifar100: bool = False) -> np.ndarray:
    """The python-pickle batches as distributed; returns the train images in file order."""
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train", "test"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    key = b"fine_labels" if cifar100 else b"labels"
    train = []
    for i, name in enumerate(names):
        n = per_batch * (5 if cifar100 and name == "train" else 1)
        x = smooth_images(n, 3, 32, i)
        labels = [j % 10 for j in range(n)]  # CIFAR-100 too: enough images per class for a split
        (folder / name).write_bytes(pickle.dumps({b"data": x.reshape(n, -1), key: labels,
                                                  b"filenames": [b"x.png"] * n}, protocol=2))
        if "test" not in name:
            train.append(x)
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]} if cifar100 else \
        {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (folder / ("meta" if cifar100 else "batches.meta")).write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(train)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    body = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(body) if gz else body)


def write_mnist(root: Path, n_train: int, n_test: int, gz: bool) -> None:
    root.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", smooth_images(n, 1, 28, seed)[:, 0], gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8), gz)


def write_folder(root: Path, per_class: int, classes=("cat", "dog", "owl"), fmt="JPEG", size=(40, 30)) -> None:
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = smooth_images(1, 3, max(size), 100 * k + i)[0][:, :size[1], :size[0]]
            (root / name / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(encode(x, fmt))


def write_tars(root: Path, counts: dict[str, int], per_tar: int = 8, fmt: str = "JPEG") -> dict[bytes, int]:
    """WebDataset tars of jpg + cls per split; returns every image's bytes -> class."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    truth, k = {}, 0
    for split, n in counts.items():
        for t in range(-(-n // per_tar)):
            with wds.TarWriter(str(root / f"{split}-{t:06d}.tar")) as sink:
                for _ in range(min(per_tar, n - t * per_tar)):
                    raw = encode(smooth_images(1, 3, 24, 1000 + k)[0], fmt)
                    truth[raw] = k % 4
                    sink.write({"__key__": f"s{k:05d}", "jpg" if fmt == "JPEG" else "png": raw, "cls": k % 4})
                    k += 1
    return truth


# ---------------------------------------------------------------------------- sources

def test_digits_split_is_fixed_stratified_and_shards_hold_it(tmp_path):
    m1 = images.ingest(images.Config(), tmp_path / "a")
    m2 = images.ingest(images.Config(), tmp_path / "b")
    assert m1["files"]["split.npz"]["sha256"] == m2["files"]["split.npz"]["sha256"]
    with np.load(tmp_path / "a" / "split.npz") as f:
        split = {k: f[k] for k in f.files}
    with np.load(tmp_path / "a" / images.ARRAYS) as f:
        labels = f["labels"]
    all_idx = np.concatenate(list(split.values()))
    assert len(all_idx) == len(set(all_idx)) == 1797
    for part in split.values():  # every class in every split near its overall share
        assert np.abs(np.bincount(labels[part], minlength=10) / len(part) - 0.1).max() < 0.02
    (tmp_path / "a" / "split.npz").write_bytes(b"changed")
    with pytest.raises(DataError, match="split.npz: checksum does not match"):
        verify_manifest(tmp_path / "a", fix="re-run ingest")


def test_digits_shards_decode_to_the_same_pixels(digits_shards):
    from sklearn.datasets import load_digits

    stats = read_stats(digits_shards)
    assert {k: v["samples"] for k, v in stats["splits"].items()} == {"train": 1259, "val": 269, "test": 269}
    assert stats["input_shape"] == [1, 8, 8] and stats["image"]["pixel_max"] == 16
    assert not stats["image"]["augment"]["flip"]  # never for digits
    x = torch.cat([b[0] for b in open_split(digits_shards, "test", batch_size=32)])
    assert x.dtype == torch.float32 and x.shape == (269, 1, 8, 8)
    every = load_digits().images / 16.0
    found = {tuple(np.round(i.numpy().ravel(), 6)) for i in x}
    assert found <= {tuple(np.round(i.ravel(), 6)) for i in every}  # exactly sklearn's pixels / 16


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_python_batches(tmp_path, cifar100):
    train = write_cifar(tmp_path / "src", per_batch=12, cifar100=cifar100)
    shards, stats, _ = build(tmp_path, source="cifar100" if cifar100 else "cifar10",
                                    path=str(tmp_path / "src"), samples_per_shard=16, val_fraction=0.2,
                                    fit_evaluator=False)
    sizes = {k: v["samples"] for k, v in stats["splits"].items()}
    assert sizes["test"] == 12 and sizes["train"] + sizes["val"] == 60 and sizes["val"] >= 10  # val cut from train
    assert stats["input_shape"] == [3, 32, 32] and stats["num_classes"] == (100 if cifar100 else 10)
    assert stats["class_names"][1] == ("c1" if cifar100 else "class1")
    assert {Path(k).name for k in stats["source_sha256"]} >= ({"train", "test"} if cifar100 else
                                                              {"data_batch_1", "test_batch"})
    assert np.allclose(stats["mean"], (train / 255.0).mean((0, 2, 3)), atol=0.03)
    # raw uint8 through the shards, unchanged
    got = torch.cat([b[0] for b in open_split(shards, "train", batch_size=64)]).numpy()
    train_bytes = {x.tobytes() for x in train}
    assert all((np.round(g * 255).astype(np.uint8)).tobytes() in train_bytes for g in got)
    shard_bytes = sum(s["bytes"] for v in stats["splits"].values() for s in v["shards"])
    assert shard_bytes <= 1.1 * 72 * 3072  # gzipped tars of raw uint8: no float32, headers compressed


@pytest.mark.parametrize("gz, source", [(True, "mnist"), (False, "fashion_mnist")])
def test_mnist_idx_files(tmp_path, gz, source):
    write_mnist(tmp_path / "src" / "raw", 40, 20, gz)  # torchvision's MNIST/raw layout
    shards, stats, _ = build(tmp_path, source=source, path=str(tmp_path / "src"), samples_per_shard=16,
                             evaluator={"epochs": 1, "max_samples": 100})
    assert stats["input_shape"] == [1, 28, 28] and stats["splits"]["test"]["samples"] == 20
    assert stats["image"]["augment"]["flip"] is (source == "fashion_mnist")
    assert stats["evaluator"]["accuracy"]["train"] >= 0  # the feature network fits at 28x28
    x, _ = next(iter(open_split(shards, "val", batch_size=8)))
    assert x.shape[1:] == (1, 28, 28) and stats["splits"]["val"]["samples"] == 10  # one per class cut from train


@pytest.mark.parametrize("splits", [False, True])
def test_image_folder_passes_jpeg_bytes_through(tmp_path, splits):
    src = tmp_path / "src"
    if splits:
        write_folder(src / "train", 6)
        write_folder(src / "val", 2)
    else:
        write_folder(src, 8)
    shards, stats, _ = build(tmp_path, source="imagefolder", path=str(src), samples_per_shard=8,
                             augment={"style": "imagenet", "size": 16}, val_fraction=0.25, test_fraction=0.25,
                             fit_evaluator=False)
    assert stats["class_names"] == ["cat", "dog", "owl"] and stats["input_shape"] == [3, 16, 16]
    sizes = {k: v["samples"] for k, v in stats["splits"].items()}
    assert sum(sizes.values()) == 24 and min(sizes.values()) >= 3
    if splits:
        assert sizes["val"] == 6  # the folder's own val split
    files = {p.read_bytes() for p in src.rglob("*.jpg")}
    stored = [s[0] for e in stats["splits"]["train"]["shards"]
              for s in iter_shard(shards / e["file"], e, ("jpg", "cls"))]
    assert stored and all(raw in files for raw in stored)  # never re-encoded
    x, _ = next(iter(open_split(shards, "train", batch_size=4, shuffle=True, augment=True)))
    assert x.shape == (4, 3, 16, 16) and 0 <= x.min() and x.max() <= 1


def test_webdataset_source_cuts_missing_splits_and_passes_bytes(tmp_path):
    truth = write_tars(tmp_path / "src", {"train": 40, "val": 8}, fmt="PNG")
    shards, stats, _ = build(tmp_path, source="webdataset", path=str(tmp_path / "src"), samples_per_shard=10,
                             augment={"style": "cifar", "size": 24}, test_fraction=0.2, fit_evaluator=False)
    sizes = {k: v["samples"] for k, v in stats["splits"].items()}
    assert sizes["val"] == 8 and sizes["test"] == 8 and sizes["train"] == 32
    assert set(stats["source_sha256"]) == {p.name for p in (tmp_path / "src").glob("*.tar")}
    got = [(raw, label) for split in ("train", "val", "test") for e in stats["splits"][split]["shards"]
           for raw, label in iter_shard(shards / e["file"], e, ("png", "cls"))]
    assert len(got) == 48 and all(truth[raw] == label for raw, label in got)


# ---------------------------------------------------------------------------- transforms

def test_augmentation_is_fixed_by_the_seed_and_differs_between_seeds(tmp_path):
    write_folder(tmp_path / "src", 4, fmt="JPEG", size=(64, 48))
    shards, _, _ = build(tmp_path, source="imagefolder", path=str(tmp_path / "src"), samples_per_shard=4,
                         augment={"style": "imagenet", "size": 24}, fit_evaluator=False)

    def epoch(seed, ep):
        ds = open_split(shards, "train", shuffle=True, seed=seed, batch_size=4, augment=True)
        ds.set_epoch(ep)
        return torch.cat([b[0] for b in ds])

    assert torch.equal(epoch(0, 1), epoch(0, 1))  # a resumed epoch replays exactly
    assert not torch.equal(epoch(0, 1), epoch(0, 2)) and not torch.equal(epoch(0, 1), epoch(1, 1))
    evals = [torch.cat([b[0] for b in open_split(shards, "val", batch_size=4)]) for _ in range(2)]
    assert torch.equal(*evals)  # evaluation: resize + centre crop, no randomness


def test_random_resized_crop_stays_inside_the_image_and_covers_the_scale():
    rng = random.Random(0)
    areas = []
    for _ in range(500):
        x0, y0, x1, y1 = transforms.random_resized_crop(400, 350, 0.08, rng)
        assert 0 <= x0 < x1 <= 400 + 1e-9 and 0 <= y0 < y1 <= 350 + 1e-9
        assert 3 / 4 - 1e-6 <= (x1 - x0) / (y1 - y0) <= 4 / 3 + 1e-6 or (x1 - x0, y1 - y0) == (400, 350)
        areas.append((x1 - x0) * (y1 - y0) / (400 * 350))
    assert min(areas) < 0.15 and max(areas) > 0.9


def test_cifar_style_crop_is_a_shift_and_flip_mirrors():
    image = {"channels": 1, "pixel_max": 255, "augment": {"style": "cifar", "size": 8, "pad": 2, "flip": True}}
    t = transforms.ImageTransform(image, train=True)
    x = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    for seed in range(20):
        out = t.pixels(x, random.Random(seed))
        assert out.shape == (1, 8, 8)
        inside = out[out > 0]  # zeros come from the padding (and pixel 0)
        assert set(inside.tolist()) <= set(range(64))
    flipped = transforms.ImageTransform({**image, "augment": {**image["augment"], "pad": 0}}, train=True)
    outs = {tuple(flipped.pixels(x, random.Random(s)).flatten().tolist()) for s in range(20)}
    assert outs == {tuple(x.flatten().tolist()), tuple(x.flip(-1).flatten().tolist())}


def test_cifar_style_batch_augmentation_is_each_images_padded_crop_drawn_in_order():
    image = {"channels": 3, "pixel_max": 255, "augment": {"style": "cifar", "size": 6, "pad": 2, "flip": True}}
    t = transforms.ImageTransform(image, train=True)
    x = torch.randint(1, 256, (40, 3, 6, 6), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    out = t.augment(x, random.Random(7))
    # The reference: the draws made image by image (row offset, column offset, flip), each image
    # zero-padded by 2 and cropped back to 6 x 6 at that offset, then mirrored.
    rng, padded = random.Random(7), torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        r, c = rng.randint(0, 4), rng.randint(0, 4)
        want = padded[i, :, r:r + 6, c:c + 6]
        assert torch.equal(out[i], want.flip(-1) if rng.random() < 0.5 else want)
    assert out.dtype == torch.uint8 and len({tuple(o.flatten().tolist()) for o in out}) == len(x)
    # One image at a time (batch_size None in the reader) draws the same numbers and gets the same pixels.
    rng = random.Random(7)
    assert torch.equal(torch.stack([t.pixels(img, rng) for img in x]), out)
    # Evaluation leaves a batch as it is.
    assert torch.equal(transforms.ImageTransform(image, train=False).augment(x, random.Random(7)), x)


# ---------------------------------------------------------------------------- streaming

def id_shards(directory: Path, n: int, per_shard: int) -> Path:
    """Encoded PNG shards whose cls is the sample's id."""
    pngs = [encode(np.full((1, 4, 4), i % 256, np.uint8), "PNG") for i in range(n)]
    image = {"channels": 1, "pixel_max": 255, "source_size": None,
             "augment": {"style": "cifar", "size": 4, "pad": 1, "flip": False}}
    write_shards(directory, {"train": {"png": pngs, "cls": list(range(n))}}, per_shard, fields=images.FIELDS,
                 meta={"dataset": "images", "image": image, "input_shape": [1, 4, 4]})
    return directory


@pytest.mark.parametrize("world_size, loader_workers", [(2, 2)])
def test_encoded_shards_every_sample_once_per_epoch(tmp_path, world_size, loader_workers):
    n = 203
    shards = id_shards(tmp_path, n, 16)
    for epoch in range(2):
        ids, batches = [], []
        for rank in range(world_size):
            ds = open_split(shards, "train", rank=rank, world_size=world_size, shuffle=True, seed=1,
                              batch_size=16, augment=True, shuffle_buffer=32)
            ds.set_epoch(epoch)
            got = [y.tolist() for _, y in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=loader_workers)]
            batches.append(len(got))
            ids += [i for b in got for i in b]
        assert sorted(ids) == list(range(n)) and set(Counter(ids).values()) == {1}
        assert len(set(batches)) == 1


class CountingDataset(ShardDataset):
    """Counts samples read from the tars, so a consumer can see how many are held in between."""

    read = 0

    def _stream(self, entries):
        for item in super()._stream(entries):
            CountingDataset.read += 1
            yield item


def test_a_worker_holds_at_most_the_buffer_and_one_sample(tmp_path):
    shards = id_shards(tmp_path, 300, 50)
    ds = CountingDataset(shards, "train", shuffle=True, shuffle_buffer=20)
    held = []
    for yielded, _ in enumerate(ds, start=1):
        held.append(CountingDataset.read - yielded)
    assert CountingDataset.read == 300 and max(held) <= 20 + 1  # never a whole shard (50) or split (300)


def test_the_first_batch_does_not_wait_for_every_shard_to_be_hashed(tmp_path):
    shards = id_shards(tmp_path, 200, 20)
    victim = shards / read_stats(shards)["splits"]["train"]["shards"][-1]["file"]
    data = bytearray(victim.read_bytes())
    data[-2000] ^= 0xFF  # same size, other bytes: only a hash can tell
    victim.write_bytes(bytes(data))
    it = iter(open_split(shards, "train", batch_size=20))
    next(it)  # the first shard streams at once
    with pytest.raises(DataError, match=f"{victim.name}: shard is corrupt"):
        list(it)


# ---------------------------------------------------------------------------- bad inputs

def test_a_corrupt_jpeg_in_a_shard_names_the_shard_and_the_key(tmp_path):
    good = encode(smooth_images(1, 3, 8, 0)[0], "JPEG")
    bad = good[:40] + b"\x00" * 30  # a header, then nothing decodable
    image = {"channels": 3, "pixel_max": 255, "source_size": None,
             "augment": {"style": "imagenet", "size": 8, "flip": True}}
    write_shards(tmp_path, {"train": {"jpg": [good, bad, good], "cls": [0, 1, 0]}}, 8, fields=images.FIELDS,
                 meta={"dataset": "images", "image": image, "input_shape": [3, 8, 8]})
    with pytest.raises(DataError, match=r"train-000000.tar: sample 'train0000001': cannot decode"):
        list(open_split(tmp_path, "train"))


def test_a_class_folder_without_images_is_named(tmp_path):
    write_folder(tmp_path / "src", 3)
    (tmp_path / "src" / "empty").mkdir()
    (tmp_path / "src" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"src/empty: class folder 'empty' has no images"):
        build(tmp_path, source="imagefolder", path=str(tmp_path / "src"), augment={"style": "imagenet"})


def test_an_image_with_the_wrong_channel_count(tmp_path):
    write_folder(tmp_path / "src", 3)
    Image.new("L", (20, 20), 7).save(tmp_path / "src" / "dog" / "grey.png")
    with pytest.raises(DataError, match=r"dog/grey.png: has 1 bands, data.<name>.channels is 3"):
        build(tmp_path, source="imagefolder", path=str(tmp_path / "src"), on_channel_mismatch="error",
              augment={"style": "imagenet"})
    _, _, manifest = build(tmp_path / "ok", source="imagefolder", path=str(tmp_path / "src"),
                               augment={"style": "imagenet", "size": 8}, fit_evaluator=False)
    assert manifest["converted_on_decode"] == 1  # the default converts it, and says so


def test_a_cifar_batch_of_the_wrong_length_is_named(tmp_path):
    write_cifar(tmp_path / "src", per_batch=4)
    batch = tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3"
    d = pickle.loads(batch.read_bytes(), encoding="bytes")
    d[b"labels"] = d[b"labels"][:-1]
    batch.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DataError, match="data_batch_3: 4 images but 3 labels"):
        build(tmp_path, source="cifar10", path=str(tmp_path / "src"))
    d[b"data"] = d[b"data"][:, :100]
    batch.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DataError, match="data_batch_3: .*expected uint8 rows of 3072 values"):
        build(tmp_path, source="cifar10", path=str(tmp_path / "src"))


def test_missing_source_files_say_where_the_data_comes_from(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*nothing downloads"):
        build(tmp_path, source="cifar10", path=str(tmp_path / "nowhere"))
    (tmp_path / "mn").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*IDX file not found"):
        build(tmp_path, source="mnist", path=str(tmp_path / "mn"))


def test_config_refuses_flipped_digits_and_a_missing_path():
    with pytest.raises(ConfigError, match="augment.flip: a mirrored digit"):
        parse(images.Config, {"augment": {"flip": True}}, "data.digits")
    with pytest.raises(ConfigError, match="path: source cifar10 needs"):
        parse(images.Config, {"source": "cifar10"}, "data.cifar")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        build(tmp_path / "b", source="cifar10", path=str(tmp_path))


def test_tar_reader_is_webdataset_compatible(tmp_path):
    """Our shards read with plain webdataset as (jpg|png|npy, cls) pairs."""
    write_cifar(tmp_path / "src", per_batch=4)
    shards, stats, _ = build(tmp_path, source="cifar10", path=str(tmp_path / "src"), fit_evaluator=False)
    first = shards / stats["splits"]["train"]["shards"][0]["file"]
    with tarfile.open(first, "r:gz") as tar:
        names = tar.getnames()
    assert {n.rpartition(".")[2] for n in names[:2]} == {"npy", "cls"}
