"""Run state under a storage root given as a local path, a file:// URL or another fsspec URL.

``memory://`` is fsspec's in-process object store: no rename, no append, like s3:// and
gs://, so it exercises the code path a cloud bucket takes without a network.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import torch

from components.data.manifest import DataError
from components.data.shards import localize, publish, read_stats
from components.data.writer import STATS
from components.training import checkpoint as ckpt
from components.training import storage
from components.training.launch import probe_address
from components.training.loop import (
    EPOCHS,
    HISTORY,
    RESUMES,
    read_rows,
    train_loop_per_worker,
)
from tests.components.training.test_loop import tiny_train
from tests.conftest import Recorder, free_port, numbered_shards


@pytest.fixture(params=["path", "file", "memory"])
def root(request, tmp_path) -> str:
    return {"path": str(tmp_path / "store"), "file": (tmp_path / "store").as_uri(),
            "memory": f"memory://store-{uuid.uuid4().hex[:8]}"}[request.param]


def save(root: str, epoch: int) -> None:
    model = torch.nn.Linear(3, 2)
    torch.manual_seed(epoch)
    ckpt.save(ckpt.epoch_dir(root, epoch), model=model, optimizer={"lr": 0.1 * epoch}, epoch=epoch,
              step=10 * epoch, config={"lr": 0.1}, metrics={"val_loss": 1.0 / (epoch + 1)})


def test_checkpoints_round_trip_and_prune_under_any_root(root):
    for epoch in range(4):
        save(root, epoch)
    ckpt.prune(f"{root}/checkpoints", 2)  # nothing there: fine
    newest = ckpt.latest(root)
    assert newest == storage.join(root, "epoch-0003")
    state, meta = ckpt.load(newest)
    assert state["epoch"] == 3 and state["optimizer"] == {"lr": pytest.approx(0.3)} and meta["step"] == 30
    ckpt.prune(root, 2)
    assert storage.listdir(root) == ["epoch-0002", "epoch-0003"]


def test_a_half_written_checkpoint_is_never_the_latest(root):
    save(root, 0)
    # A writer killed after the weights and before config.json (the last file written).
    with storage.open_file(storage.join(root, "epoch-0001", ckpt.STATE), "wb") as f:
        f.write(b"truncated")
    storage.write_text(storage.join(root, "epoch-0002.tmp-123", ckpt.CONFIG), "{}")
    # What a SIGKILL during a local save leaves: the folder being built aside (storage.written_whole).
    storage.write_text(storage.join(root, ".epoch-0003.tmp-456", "epoch-0003", ckpt.CONFIG), "{}")
    assert ckpt.latest(root) == storage.join(root, "epoch-0000")
    ckpt.prune(root, 2)  # the debris goes, the complete checkpoint stays
    assert storage.listdir(root) == ["epoch-0000"]


def test_tables_append_and_replace_whole(root):
    url = storage.join(root, "run", HISTORY)
    assert read_rows(url) == [] and storage.read_text(url) is None
    storage.append_text(url, json.dumps({"step": 1}) + "\n")
    storage.append_text(url, json.dumps({"step": 2}) + "\n")
    assert [r["step"] for r in read_rows(url)] == [1, 2]
    storage.write_text(url, "")
    assert read_rows(url) == [] and storage.exists(url)
    storage.remove(storage.join(root, "run"))
    assert not storage.exists(url)


def test_shards_published_under_a_root_are_read_back_whole_by_a_worker(root, digits_shards, tmp_path):
    url = publish(digits_shards, storage.join(root, "shards", "digits-v1"))
    local = localize(url, cache_root=tmp_path / "cache")
    if storage.local_path(root) is not None:
        assert local == Path(storage.local_path(url))  # a path or a shared mount is read in place
    else:
        assert str(local).startswith(str(tmp_path / "cache"))  # an object store: one copy per node
        assert localize(url, cache_root=tmp_path / "cache") == local  # and only one
    names = sorted(p.relative_to(digits_shards).as_posix() for p in digits_shards.rglob("*") if p.is_file())
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == names
    assert all((local / n).read_bytes() == (digits_shards / n).read_bytes() for n in names)
    assert read_stats(local) == read_stats(digits_shards)

    # A copy cut short before its last file (stats.json) is completed by the next publish.
    storage.remove(storage.join(url, STATS))
    storage.remove(storage.join(url, names[0]))
    publish(digits_shards, url)
    assert storage.read_text(storage.join(url, STATS)) == (digits_shards / STATS).read_text()
    assert storage.exists(storage.join(url, names[0]))


def test_a_corrupt_shard_is_never_published(root, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(numbered_shards(tmp_path / "src", 64, 16, split="all"), shards)
    victim = shards / "val-000001.tar"
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    url = storage.join(root, "shards", f"numbers-{uuid.uuid4().hex[:8]}")
    with pytest.raises(DataError, match="val-000001.tar: shard is corrupt"):
        publish(shards, url)
    assert not storage.exists(storage.join(url, STATS))


def test_shards_missing_where_a_worker_looks_are_named_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="publishes shards under runtime.storage_root"):
        localize(f"memory://nothing-{uuid.uuid4().hex[:8]}/shards/digits-v1", cache_root=tmp_path)
    # A node-local path that only the head has (a cluster without runtime.storage_root).
    with pytest.raises(DataError, match="no shards on node .*set runtime.storage_root to a shared mount or URL"):
        localize(str(tmp_path / "data" / "shards" / "digits"))


def test_the_loop_trains_and_resumes_with_its_run_dir_and_shards_under_a_url(root, digits_shards):
    run_dir = storage.join(root, "runs", "resnet", "train-key")
    data_url = publish(digits_shards, storage.join(root, "shards", "digits-v1"))
    cfg = {"algo": "resnet", "train": tiny_train(3), "data_dir": data_url, "run_dir": run_dir}
    first = train_loop_per_worker({**cfg, "max_epochs": 2})  # stops after epoch 1, as a killed stage would
    rec = Recorder()
    resumed = train_loop_per_worker({**cfg, "hooks": [rec]})
    assert [m["epoch"] for m, _ in rec.epochs] == [2] and resumed["step"] == first["step"] * 3 // 2
    assert [e["epoch"] for e in read_rows(storage.join(run_dir, EPOCHS))] == [0, 1, 2]
    steps = [r["step"] for r in read_rows(storage.join(run_dir, HISTORY))]
    assert steps == sorted(set(steps)) and steps[-1] <= resumed["step"]
    assert read_rows(storage.join(run_dir, RESUMES)) == [
        {"from_epoch": 1, "step": first["step"], "source": "run_dir", "time": pytest.approx(time.time(), abs=600)}]
    assert ckpt.latest(storage.join(run_dir, "checkpoints")).endswith("epoch-0002")
    if storage.local_path(root) is None:
        assert rec.epochs[0][1].is_dir()  # a local copy for Ray Train to persist


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_unreachable_ray_address_fails_within_seconds_naming_the_variable(form):
    address = form.format(f"127.0.0.1:{free_port()}")  # free: nothing listens
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"RAY_ADDRESS={address}.*ray start --head"):
        probe_address(address, timeout=5)
    assert time.perf_counter() - t0 < 6


def test_a_malformed_ray_address_is_named():
    with pytest.raises(ConnectionError, match="RAY_ADDRESS=':6379' is not an address"):
        probe_address(":6379")
    probe_address("auto")  # Ray resolves these itself


def test_a_folder_written_whole_replaces_the_old_one_or_leaves_it(tmp_path):
    out = tmp_path / "plots"
    with storage.written_whole(out) as tmp:
        assert tmp.name == "plots" and tmp.parent != tmp_path  # built aside, under the real name
        (tmp / "a.csv").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]
    with pytest.raises(KeyboardInterrupt), storage.written_whole(out) as tmp:
        (tmp / "b.csv").write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write
    # The previous folder is intact, the half-built one is gone, and nothing else is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]
    assert [p.name for p in out.iterdir()] == ["a.csv"]
