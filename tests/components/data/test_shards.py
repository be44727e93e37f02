from collections import Counter

import pytest
import torch

from components.data.batching import padding
from components.data.manifest import DataError
from components.data.registry import open_split
from components.data.shards import read_stats
from tests.conftest import numbered_shards


def epoch_ids(shards, world_size, loader_workers, epoch, batch_size=16):
    """Sample ids each rank sees in one epoch, and each rank's batch count."""
    per_rank, batches = [], []
    for rank in range(world_size):
        ds = open_split(shards, "train", rank=rank, world_size=world_size, shuffle=True, seed=3,
                          batch_size=batch_size)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=loader_workers)
        got = [x[:, 0, 0, 0].long().tolist() for x, _ in loader]
        batches.append(len(got))
        per_rank.append([i for b in got for i in b])
    return per_rank, batches


@pytest.mark.parametrize("world_size, loader_workers", [(1, 0), (2, 0), (2, 2), (3, 2)])
def test_every_sample_exactly_once_per_epoch_with_equal_batches(tmp_path, world_size, loader_workers):
    n = 203  # shards of uneven size: 13 x 15-16
    shards = numbered_shards(tmp_path, n, 16)
    orders = []
    for epoch in range(2):
        per_rank, batches = epoch_ids(shards, world_size, loader_workers, epoch)
        seen = Counter(i for ids in per_rank for i in ids)
        assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}
        assert len(set(batches)) == 1  # DDP needs equal step counts on every rank
        orders.append([i for ids in per_rank for i in ids])
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_fewer_shards_than_workers_is_a_clear_error(tmp_path):
    shards = numbered_shards(tmp_path, 20, 16)  # 2 shards
    with pytest.raises(DataError, match="fewer than 3 workers; lower samples_per_shard"):
        open_split(shards, "train", rank=0, world_size=3, shuffle=True)


def test_fewer_batches_than_loader_workers_with_data_is_a_clear_error(tmp_path):
    shards = numbered_shards(tmp_path, 45, 16)  # 3 shards of 15: with 2 loader workers both hold data
    ds = open_split(shards, "train", rank=0, world_size=1, shuffle=True, batch_size=45)
    assert ds.num_batches() == 1
    with pytest.raises(DataError, match="1 batches of batch_size 45 are fewer than its 2 loader workers with data"):
        list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))
    assert len(list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0))) == 1  # one worker: fine


@pytest.mark.parametrize("world_size, loader_workers", [(2, 0), (3, 0), (4, 2)])
def test_unshuffled_split_is_dealt_by_sample_in_order_and_cached(tmp_path, world_size, loader_workers):
    shards = numbered_shards(tmp_path, 45, 16)  # 3 shards of 15: whole shards would give one of 2 ranks twice the work
    per_rank = []
    for rank in range(world_size):
        ds = open_split(shards, "train", rank=rank, world_size=world_size, batch_size=8, cache_bytes=1 << 20)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=loader_workers)
        epochs = [[i for x, _ in loader for i in x[:, 0, 0, 0].long().tolist()] for _ in range(2)]
        assert epochs[0] == epochs[1]  # the second epoch (from the cache without workers) reads the same
        per_rank.append(epochs[0])
        if not loader_workers:
            assert ds._cached_bytes > 0 and all(len(v) == stop - first for (_, first, stop), v in ds._cache.items())
    sizes = [len(ids) for ids in per_rank]
    assert max(sizes) - min(sizes) <= 1  # balanced to one sample
    if not loader_workers:
        assert [i for ids in per_rank for i in ids] == list(range(45))  # contiguous ranges, in shard order
    assert sorted(i for ids in per_rank for i in ids) == list(range(45))


def test_truncated_shard_is_named(tmp_path):
    shards = numbered_shards(tmp_path, 64, 16)
    victim = shards / "train-000002.tar"
    victim.write_bytes(victim.read_bytes()[:700])
    with pytest.raises(DataError, match=r"train-000002.tar: shard is corrupt or truncated"):
        list(open_split(shards, "train"))


def test_corrupt_shard_without_checksums_is_named(tmp_path):
    from components.data.shards import read_shard

    shards = numbered_shards(tmp_path, 32, 16)
    victim = shards / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[600:1400] = b"\xff" * 800
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-000001.tar: cannot read shard"):
        read_shard(victim)


def test_missing_shards_say_how_to_make_them(tmp_path):
    with pytest.raises(DataError, match=f"stats.json: not found.*`dvc repro preprocess-{tmp_path.name}`"):
        open_split(tmp_path, "train")
    shards = numbered_shards(tmp_path / "s", 32, 16)
    (shards / "train-000000.tar").unlink()
    with pytest.raises(DataError, match="train-000000.tar: shard not found"):
        list(open_split(shards, "train"))


def test_shards_are_byte_identical_when_rewritten(tmp_path):
    a = read_stats(numbered_shards(tmp_path / "a", 50, 16))
    b = read_stats(numbered_shards(tmp_path / "b", 50, 16))
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_tar_members_reads_what_tarfile_writes(fmt):
    import io
    import tarfile

    from components.data.shards import tar_members

    files = [("a" * 150 + ".txt", b"hello"), ("dir/x.bin", bytes(1000)), ("e.cls", b""), ("ü.npy", b"y" * 513)]
    if fmt == "ustar":
        files = [(n, d) for n, d in files if len(n) < 100 and n.isascii()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format={"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT,
                                                     "ustar": tarfile.USTAR_FORMAT}[fmt]) as tar:
        folder = tarfile.TarInfo("a-folder")
        folder.type = tarfile.DIRTYPE  # no data: skipped
        tar.addfile(folder)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime makes tarfile write a pax header
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    assert [(m["fname"], m["data"]) for m in tar_members(buf)] == files
    broken = bytearray(buf.getvalue())
    broken[520] ^= 0x01  # inside the second header (the first is the folder's)
    with pytest.raises(ValueError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(broken))))


# ---------------------------------------------------------------------------- token-budget batches

def token_epoch(shards, world_size, loader_workers, epoch, **batching):
    """Per rank, for each batch: the source ids (one id per sample), its tokens and its padded cells."""
    per_rank = []
    for rank in range(world_size):
        ds = open_split(shards, "train", rank=rank, world_size=world_size, shuffle=True, seed=3, **batching)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=loader_workers)
        per_rank.append([(src[:, 0].tolist(), *padding((src, tgt))) for src, tgt in loader])
    return per_rank


@pytest.mark.parametrize("world_size, loader_workers", [(1, 0), (2, 2)])
def test_token_budget_batches_every_sample_once_with_equal_steps_and_little_padding(tmp_path, world_size,
                                                                                    loader_workers):
    from tests.conftest import text_shards

    n = 1500
    shards = text_shards(tmp_path, n, 130)  # 12 shards of 125
    stats = read_stats(shards)
    total = sum(e["tokens"] for e in stats["splits"]["train"]["shards"])
    budget = 1200
    for epoch in range(2):
        per_rank = token_epoch(shards, world_size, loader_workers, epoch, batch_tokens=budget)
        ids = Counter(i for batches in per_rank for b, _, _ in batches for i in b)
        assert sorted(ids) == list(range(1, n + 1)) and set(ids.values()) == {1}  # each sample once
        steps = {len(batches) for batches in per_rank}
        assert len(steps) == 1  # DDP: every rank the same number of steps, agreed before reading
        assert steps.pop() * world_size >= total / budget  # no batch holds much more than the budget on average
        tokens = [t for batches in per_rank for _, t, _ in batches]
        assert sum(tokens) == total and max(tokens) < 1.4 * budget
        real, cells = (sum(b[k] for batches in per_rank for b in batches) for k in (1, 2))
        assert 1 - real / cells < 0.15  # bucketed by length: little padding
    # Fixed-size batches of the same mean token count pad far more.
    mean = total / n
    fixed = token_epoch(shards, world_size, loader_workers, 0, batch_size=round(budget / mean))
    real, cells = (sum(b[k] for batches in fixed for b in batches) for k in (1, 2))
    assert 1 - real / cells > 0.3


def test_token_budget_needs_shards_that_record_tokens(tmp_path):
    shards = numbered_shards(tmp_path, 40, 16)
    with pytest.raises(DataError, match="records no tokens per shard.*set batch_size instead"):
        open_split(shards, "train", batch_tokens=100)


def test_tar_sink_writes_what_webdataset_writes(tmp_path):
    """The shard writer's own tar headers are byte for byte those of webdataset.TarWriter."""
    import io

    import numpy as np
    import webdataset as wds

    from components.data.writer import TarSink

    samples = [{"__key__": f"train{i:07d}", "src.npy": np.arange(i % 7, dtype=np.int16),
                "input.npy": np.ones((3, 4), np.uint8), "f.npy": np.asfortranarray(np.ones((2, 3))),
                "src.txt": "zwei und \u00e4" * i, "cls": i, "jpg": b"\xff\xd8" * (i * 37)} for i in range(40)]
    samples += [{"__key__": "k" * 120, "txt": "a long name"}, {"__key__": "sch\u00f6n", "txt": "non-ASCII"}]
    theirs, ours = io.BytesIO(), io.BytesIO()
    writer, sink = wds.TarWriter(theirs, mtime=0), TarSink(ours)
    for sample in samples:
        writer.write(sample)
        sink.write(sample)
    writer.close()
    sink.close()
    assert ours.getvalue() == theirs.getvalue()
