"""WebDataset shards: writing them, and reading them split by Ray rank and loader worker.

A shard directory holds ``{split}-NNNNNN.tar`` files and ``stats.json`` (sample counts,
sha256 and bytes per shard, class counts, pixel statistics). Each sample is a tar group
``<key>.input.npy`` + ``<key>.target.cls``.

Reading an epoch: the split's shard list is shuffled with ``(seed, epoch)`` (the same
order on every rank), dealt to ranks round-robin, then to the rank's DataLoader workers
round-robin; each worker shuffles its samples with ``(seed, epoch, rank, worker)``. Every
sample is read exactly once per epoch over all ranks and workers.

With ``batch_size`` set, the dataset yields collated batches, and every rank yields the
same number of them in an epoch (the most any rank needs): a rank holding fewer samples
makes its batches a little smaller rather than fewer. DDP needs equal step counts on
every rank (a rank that stops early leaves the others waiting in all-reduce), and this
keeps them equal without dropping or repeating a sample.
"""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from components.data.manifest import DataError, sha256

STATS = "stats.json"
SPLITS = ("train", "val", "test")
CACHE_LIMIT_BYTES = 512 << 20  # decode once and keep in memory below this size per split


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def write_split(out_dir: Path, split: str, inputs: np.ndarray, targets: np.ndarray,
                samples_per_shard: int) -> list[dict]:
    """Write one split as near-equal shards (sizes differ by at most one sample)."""
    n = len(targets)
    n_shards = max(1, math.ceil(n / samples_per_shard))
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    entries = []
    for i in range(n_shards):
        path = out_dir / shard_name(split, i)
        with open(path, "wb") as f, wds.TarWriter(f, mtime=0.0) as sink:  # mtime=0: byte-identical reruns
            for j in range(bounds[i], bounds[i + 1]):
                sink.write({"__key__": f"{split}{j:07d}", "input.npy": inputs[j], "target.cls": int(targets[j])})
        entries.append({"file": path.name, "samples": int(bounds[i + 1] - bounds[i]),
                        "bytes": path.stat().st_size, "sha256": sha256(path)})
    return entries


def write_shards(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 samples_per_shard: int, meta: dict) -> dict:
    """Write every split and ``stats.json``; returns the stats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict = {**meta, "splits": {}}
    for split, (inputs, targets) in splits.items():
        shards = write_split(out_dir, split, inputs, targets, samples_per_shard)
        classes, counts = np.unique(targets, return_counts=True)
        stats["splits"][split] = {
            "samples": int(len(targets)),
            "shards": shards,
            "class_counts": {str(int(c)): int(k) for c, k in zip(classes, counts)},
            "input_mean": float(inputs.mean()), "input_std": float(inputs.std()),
            "input_shape": list(inputs.shape[1:]),
        }
    (out_dir / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def read_stats(shard_dir: Path) -> dict:
    path = Path(shard_dir) / STATS
    if not path.exists():
        raise DataError(f"{path}: not found; create the shards with `dvc repro` (stage preprocess)")
    return json.loads(path.read_text())


def _decode(sample: dict) -> tuple[torch.Tensor, int]:
    return torch.from_numpy(np.load(io.BytesIO(sample["input.npy"]), allow_pickle=False)), int(sample["target.cls"])


def read_shard(path: Path, expected: dict | None = None) -> list[tuple[torch.Tensor, int]]:
    """All samples of one shard; a missing, truncated or corrupt file raises DataError naming it."""
    fix = "re-create it with `dvc repro --force preprocess` (or `dvc checkout` if it is DVC-tracked)"
    if not path.exists():
        raise DataError(f"{path}: shard not found; {fix}")
    if expected is not None and (path.stat().st_size != expected["bytes"] or sha256(path) != expected["sha256"]):
        raise DataError(f"{path}: shard is corrupt or truncated (size/sha256 differ from stats.json); {fix}")
    try:
        with open(path, "rb") as stream:
            files = ({**f, "__url__": str(path)} for f in wds.tariterators.tar_file_iterator(stream))
            samples = [_decode(s) for s in wds.tariterators.group_by_keys(files)]
    except (tarfile.TarError, EOFError, OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: cannot read shard ({type(exc).__name__}: {exc}); {fix}") from None
    if expected is not None and len(samples) != expected["samples"]:
        raise DataError(f"{path}: holds {len(samples)} samples, stats.json says {expected['samples']}; {fix}")
    return samples


class ShardDataset(IterableDataset):
    """One split of a shard directory as an iterable of ``(input, target)``.

    Args:
        shard_dir: directory with the shards and ``stats.json``.
        split: ``train``, ``val`` or ``test``.
        rank, world_size: this Ray Train worker's place in the group (shards are dealt by rank).
        shuffle: reshuffle shard order and samples every epoch (call :meth:`set_epoch`).
        seed: base seed of all shuffles.
        batch_size: yield ``(inputs (B, ...), targets (B,))`` batches, equally many on every rank;
            ``None`` yields single samples. Use with ``DataLoader(ds, batch_size=None)``.
    """

    def __init__(self, shard_dir: str | Path, split: str, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, batch_size: int | None = None):
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
        if len(self.shards) < world_size:
            raise DataError(f"{self.shard_dir / STATS}: split {split!r} has {len(self.shards)} shards, fewer than "
                            f"{world_size} workers; lower samples_per_shard in params.yaml data section")
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
        samples = read_shard(self.shard_dir / entry["file"], expected)
        self._verified.add(entry["file"])
        if self._cache_ok:
            self._cache[entry["file"]] = samples
        return samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        samples = [s for entry in self.shards_for(worker, num_workers) for s in self._load(entry)]
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}").shuffle(samples)
        if self.batch_size is None:
            return iter(samples)
        n_batches = self._batches_for_worker(worker, num_workers)
        edges = np.linspace(0, len(samples), n_batches + 1).round().astype(int)
        return (collate(samples[a:b]) for a, b in zip(edges[:-1], edges[1:]))


def collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = zip(*samples)
    return torch.stack(inputs), torch.tensor(targets, dtype=torch.long)
