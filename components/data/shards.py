"""WebDataset shards: writing them, and reading them split by Ray rank and loader worker.

A shard directory holds ``{split}-NNNNNN.tar`` files and ``stats.json`` (sample counts,
sha256 and bytes per shard, the sample fields, and whatever the dataset adds: class
counts, pixel statistics, the name of a tokenizer file). A sample is a tar group of
fields named by extension, as WebDataset does: ``<key>.input.npy`` + ``<key>.target.cls``
for images, ``<key>.src.npy`` + ``<key>.tgt.npy`` + ``<key>.src.txt`` ... for text.
``.npy`` decodes to a tensor, ``.cls`` to an int, ``.txt`` to a str. Training reads the
fields listed in ``stats.json["fields"]``; evaluation may ask for others (e.g. raw text).

Batches are tuples in field order: equal-shaped tensors are stacked, 1-D tensors of
different lengths are padded with 0 at the end (token id 0 is padding), ints become a
long tensor and strings a list.

Reading an epoch: the split's shard list is shuffled with ``(seed, epoch)`` (the same
order on every rank), dealt to ranks round-robin, then to the rank's DataLoader workers
round-robin; each worker shuffles its samples with ``(seed, epoch, rank, worker)``. Every
sample is read exactly once per epoch over all ranks and workers.

With ``batch_size`` set, the dataset yields collated batches, and every rank yields the
same number of them in an epoch (the most any rank needs): a rank holding fewer samples
makes its batches a little smaller rather than fewer. DDP needs equal step counts on
every rank (a rank that stops early leaves the others waiting in all-reduce), and this
keeps them equal without dropping or repeating a sample.

On a cluster, the train and tune stages ``publish`` a shard directory under the storage
root (``<root>/shards/<dataset>-<data version>``), and each worker reads it through
``localize``: straight from a path or ``file://`` URL (a shared mount), or from a copy
made once per node and version (an object store).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import platform
import random
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from filelock import FileLock
from torch.utils.data import IterableDataset, get_worker_info

from components.data.manifest import DataError, sha256
from components.training import storage

STATS = "stats.json"
SPLITS = ("train", "val", "test")
CACHE_LIMIT_BYTES = 512 << 20  # decode once and keep in memory below this size per split


def shard_name(split: str, i: int, compress: bool = False) -> str:
    return f"{split}-{i:06d}.tar" + (".gz" if compress else "")


def write_split(out_dir: Path, split: str, columns: dict[str, Sequence], samples_per_shard: int,
                compress: bool = False) -> list[dict]:
    """Write one split as near-equal shards (sizes differ by at most one sample).

    ``columns`` maps a field name (``input.npy``, ``target.cls``, ``src.txt``...) to one
    value per sample, all of the same length. ``compress`` gzips each shard (``.tar.gz``):
    worth it for many small members (a sentence pair is ~60 bytes of data in 2 KB of tar
    headers and padding); readers detect it by itself.
    """
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"split {split!r}: fields have different lengths {lengths}")
    n = next(iter(lengths.values()))
    n_shards = max(1, math.ceil(n / samples_per_shard))
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    entries = []
    for i in range(n_shards):
        path = out_dir / shard_name(split, i, compress)
        # mtime=0 in tar and gzip headers: byte-identical reruns.
        with open(path, "wb") as raw, (gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress
                                       else contextlib.nullcontext(raw)) as f, wds.TarWriter(f, mtime=0.0) as sink:
            for j in range(bounds[i], bounds[i + 1]):
                sink.write({"__key__": f"{split}{j:07d}", **{k: _encode(k, v[j]) for k, v in columns.items()}})
        entries.append({"file": path.name, "samples": int(bounds[i + 1] - bounds[i]),
                        "bytes": path.stat().st_size, "sha256": sha256(path)})
    return entries


def _encode(field: str, value: Any) -> Any:
    if field.endswith(".cls"):
        return int(value)
    return value  # .npy arrays and .txt strings: webdataset's writer encodes them by extension


def write_shards(out_dir: Path, splits: dict[str, dict[str, Sequence]], samples_per_shard: int, meta: dict,
                 fields: Sequence[str] | None = None, split_meta: dict[str, dict] | None = None,
                 compress: bool = False) -> dict:
    """Write every split and ``stats.json``; returns the stats.

    Args:
        splits: split name -> field name -> one value per sample.
        meta: dataset-wide entries of ``stats.json``.
        fields: the fields training reads, in batch order (default: every field, in order).
        split_meta: extra per-split entries (class counts, statistics).
        compress: gzip every shard (``.tar.gz``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    first = next(iter(splits.values()))
    stats: dict = {**meta, "fields": list(fields or first), "splits": {}}
    for split, columns in splits.items():
        shards = write_split(out_dir, split, columns, samples_per_shard, compress)
        stats["splits"][split] = {"samples": sum(s["samples"] for s in shards), "shards": shards,
                                  **(split_meta or {}).get(split, {})}
    (out_dir / STATS).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats


def read_stats(shard_dir: Path) -> dict:
    path = Path(shard_dir) / STATS
    if not path.exists():
        raise DataError(f"{path}: not found; create the shards with `dvc repro` (stage preprocess)")
    return json.loads(path.read_text())


def publish(shard_dir: Path, url: str) -> str:
    """Copy a shard directory to ``url`` under the storage root, unless it is there already.

    ``url`` should name the data version (``<root>/shards/<dataset>-<version>``), so a copy is
    made once per version. ``stats.json``, which lists every shard's sha256, goes last: its
    presence with the same text marks the copy complete. Returns ``url``.
    """
    stats = (Path(shard_dir) / STATS).read_text()
    if storage.read_text(storage.join(url, STATS)) != stats:
        storage.put_tree(shard_dir, url, last=STATS)
    return url


def localize(data_dir: str, cache_root: str | Path | None = None) -> Path:
    """A local directory holding the shards of ``data_dir`` (a path or a URL).

    A path or ``file://`` URL is read in place. Anything else is copied once per node into
    ``<cache_root>/<hash of the URL>`` (default: the system temp folder), under a file lock so
    the workers of one node wait for one copy. Shards are checked against the sha256 in
    ``stats.json`` when read, so a bad copy fails loudly rather than training on it.
    """
    local = storage.local_path(data_dir)
    if local is not None:
        if not (Path(local) / STATS).exists():
            raise DataError(f"{local}: no shards on node {platform.node()}; create them with `dvc repro` (stage "
                            f"preprocess), and on a multi-node cluster set runtime.storage_root to a shared mount or "
                            f"URL: train and tune then publish the shards there, where every node can read them")
        return Path(local)
    root = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "pipeline-shards"
    root.mkdir(parents=True, exist_ok=True)
    cache = root / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    with FileLock(f"{cache}.lock"):
        if not (cache / STATS).exists():
            if not storage.exists(storage.join(data_dir, STATS)):
                raise DataError(f"{data_dir}: no {STATS} there; the train or tune stage publishes shards under "
                                f"runtime.storage_root before starting workers, re-run it")
            with storage.written_whole(cache) as tmp:
                storage.get_tree(data_dir, tmp)
    return cache


def _decode_field(name: str, raw: bytes) -> Any:
    if name.endswith(".npy"):
        return torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False))
    if name.endswith(".cls"):
        return int(raw)
    if name.endswith(".txt"):
        return raw.decode("utf-8")
    raise KeyError(f"field {name!r} has no decoder (use .npy, .cls or .txt)")


def read_shard(path: Path, expected: dict | None = None,
               fields: Sequence[str] = ("input.npy", "target.cls")) -> list[tuple]:
    """All samples of one shard as tuples of ``fields``; a missing, truncated or corrupt file
    raises DataError naming it."""
    fix = "re-create it with `dvc repro --force preprocess` (or `dvc checkout` if it is DVC-tracked)"
    if not path.exists():
        raise DataError(f"{path}: shard not found; {fix}")
    if expected is not None and (path.stat().st_size != expected["bytes"] or sha256(path) != expected["sha256"]):
        raise DataError(f"{path}: shard is corrupt or truncated (size/sha256 differ from stats.json); {fix}")
    try:
        with open(path, "rb") as stream:
            files = ({**f, "__url__": str(path)} for f in wds.tariterators.tar_file_iterator(stream))
            samples = [tuple(_decode_field(k, s[k]) for k in fields) for s in wds.tariterators.group_by_keys(files)]
    except (tarfile.TarError, EOFError, OSError, KeyError, ValueError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read shard ({type(exc).__name__}: {exc}); {fix}") from None
    if expected is not None and len(samples) != expected["samples"]:
        raise DataError(f"{path}: holds {len(samples)} samples, stats.json says {expected['samples']}; {fix}")
    return samples


class ShardDataset(IterableDataset):
    """One split of a shard directory as an iterable of samples (tuples of fields).

    Args:
        shard_dir: directory with the shards and ``stats.json``.
        split: ``train``, ``val`` or ``test``.
        rank, world_size: this Ray Train worker's place in the group (shards are dealt by rank).
        shuffle: reshuffle shard order and samples every epoch (call :meth:`set_epoch`).
        seed: base seed of all shuffles.
        batch_size: yield collated batches (see :func:`collate`), equally many on every rank;
            ``None`` yields single samples. Use with ``DataLoader(ds, batch_size=None)``.
        fields: the fields of a sample, in order; default ``stats.json["fields"]``.
        fanout: graph datasets with a node task: neighbours sampled per hop around each batch's
            seed nodes (empty: the whole graph); see ``components/data/graphs.py``.

    Graph datasets batch through the same reader: their ``stats.json`` names the task, and
    batches are ``(x, edge_index, index, target)`` (``graphs.batcher``).
    """

    def __init__(self, shard_dir: str | Path, split: str, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, batch_size: int | None = None,
                 fields: Sequence[str] | None = None, fanout: Sequence[int] | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.shard_dir = Path(shard_dir)
        self.split, self.rank, self.world_size = split, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.batch_size = batch_size
        stats = read_stats(self.shard_dir)
        if split not in stats["splits"]:
            raise DataError(f"{self.shard_dir / STATS}: has no split {split!r}; re-run preprocess")
        self.shards: list[dict] = stats["splits"][split]["shards"]
        self.fields = tuple(fields or stats.get("fields") or ("input.npy", "target.cls"))
        if len(self.shards) < world_size:
            raise DataError(f"{self.shard_dir / STATS}: split {split!r} has {len(self.shards)} shards, fewer than "
                            f"{world_size} workers; lower samples_per_shard in params.yaml data section")
        from components.data import (
            graphs,  # imports torch_geometric only when a graph dataset needs it
        )

        self._collate = graphs.batcher(stats, self.shard_dir, fanout)
        self._cache_ok = sum(s["bytes"] for s in self.shards) <= CACHE_LIMIT_BYTES
        self._cache: dict[str, list] = {}
        self._verified: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for(self, worker: int = 0, num_workers: int = 1, rank: int | None = None) -> list[dict]:
        """The shards that ``(rank, worker)`` reads in the current epoch."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        rank = self.rank if rank is None else rank
        return order[rank::self.world_size][worker::num_workers]

    def num_samples(self, rank: int | None = None) -> int:
        """Samples a rank (default: this one) sees in the current epoch, over all its loader workers."""
        return sum(s["samples"] for s in self.shards_for(rank=rank))

    def num_batches(self) -> int:
        """Batches every rank yields in the current epoch."""
        if self.batch_size is None:
            raise ValueError("num_batches needs batch_size")
        return max(math.ceil(self.num_samples(r) / self.batch_size) for r in range(self.world_size))

    def _batches_for_worker(self, worker: int, num_workers: int) -> int:
        """This worker's share of the rank's batches, proportional to its samples."""
        total = self.num_batches()
        counts = [sum(s["samples"] for s in self.shards_for(w, num_workers)) for w in range(num_workers)]
        n = sum(counts)
        if n < total:
            raise DataError(f"split {self.split!r}: rank {self.rank} has {n} samples, too few for {total} batches; "
                            f"use fewer workers or a larger samples_per_shard")
        share = [total * c // n for c in counts]
        for w in sorted(range(num_workers), key=lambda w: -(total * counts[w] % n))[: total - sum(share)]:
            share[w] += 1
        return share[worker]

    def _load(self, entry: dict) -> list:
        if entry["file"] in self._cache:
            return self._cache[entry["file"]]
        # Verify a checksum once per process; later epochs re-read but skip hashing.
        expected = entry if entry["file"] not in self._verified else None
        samples = read_shard(self.shard_dir / entry["file"], expected, self.fields)
        self._verified.add(entry["file"])
        if self._cache_ok:
            self._cache[entry["file"]] = samples
        return samples

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        samples = [s for entry in self.shards_for(worker, num_workers) for s in self._load(entry)]
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}").shuffle(samples)
        if self.batch_size is None:
            return iter(samples)
        n_batches = self._batches_for_worker(worker, num_workers)
        edges = np.linspace(0, len(samples), n_batches + 1).round().astype(int)
        if self._collate is None:
            return (collate(samples[a:b]) for a, b in zip(edges[:-1], edges[1:]))
        # Graph batching may sample (neighbours): seeded like the shuffle, so an epoch replays exactly.
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.epoch}/{self.rank}/{worker}".encode()))
        return (self._collate(samples[a:b], generator) for a, b in zip(edges[:-1], edges[1:]))


def collate(samples: list[tuple]) -> tuple:
    """Batch samples field by field: stack tensors (padding 1-D ones of unequal length with 0),
    ints to a long tensor, strings to a list."""
    return tuple(_collate_field(list(values)) for values in zip(*samples))


def pad_sequences(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """1-D tensors as one (N, longest) tensor, padded with 0 at the end (token id 0 is padding)."""
    out = torch.zeros(len(values), max([len(v) for v in values] + [1]), dtype=values[0].dtype if values else torch.long)
    for i, v in enumerate(values):
        out[i, :len(v)] = v
    return out


def _collate_field(values: list) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        if all(v.shape == first.shape for v in values):
            return torch.stack(values)
        if first.dim() != 1:
            raise DataError(f"cannot batch tensors of shapes {sorted({tuple(v.shape) for v in values})}; "
                            f"only 1-D sequences are padded")
        return pad_sequences(values)
    if isinstance(first, int):
        return torch.tensor(values, dtype=torch.long)
    return values
