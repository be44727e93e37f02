"""WebDataset shards: reading them split by Ray rank and loader worker (writing them:
``components/data/writer.py``).

A shard directory holds ``{split}-NNNNNN.tar`` files and ``stats.json`` (sample counts,
sha256 and bytes per shard, the sample fields, and whatever the dataset adds: class
counts, pixel statistics, the name of a tokenizer file). A sample is a tar group of
fields named by extension, as WebDataset does: ``<key>.input.npy`` + ``<key>.target.cls``
for images, ``<key>.src.npy`` + ``<key>.tgt.npy`` + ``<key>.src.txt`` ... for text.
``.npy`` decodes to a tensor, ``.cls`` to an int, ``.txt`` to a str. Training reads the
fields listed in ``stats.json["fields"]``; evaluation may ask for others (e.g. raw text).

Batches are tuples in field order: equal-shaped tensors are stacked, 1-D tensors of
different lengths are padded with 0 at the end (token id 0 is padding), ints become a
long tensor and strings a list (:func:`collate`, the default :class:`Batcher`).

Reading an epoch streams: the split's shard list is shuffled with ``(seed, epoch)`` (the
same order on every rank), dealt to ranks round-robin, then to the rank's DataLoader workers
round-robin; each worker reads its shards one after the other, member by member, through a
shuffle buffer of ``shuffle_buffer`` samples seeded by ``(seed, epoch, rank, worker)``. A
worker holds at most the buffer plus the sample being read, whatever the dataset's size, and
every sample is read exactly once per epoch over all ranks and workers. A shard's size is
checked before it is opened and its sha256 computed as its bytes stream past: a corrupt shard
fails at its end, naming it, without hashing every shard before the first batch.

The reader knows no data type, and imports no dataset module: what a sample becomes (a decoded
and augmented image, a token batch, a sampled subgraph) is the business of the :class:`Batcher`
it is handed, made by the ``batcher`` of the dataset module that wrote the shards (named by
``stats.json["dataset"]``; ``components.data.registry.open_split`` passes it); without one,
fields are collated as they are. So an edit to image decoding re-runs only the stages of image
datasets (``pipelines/dag.py``).
Images stay encoded in the shards (``jpg``/``png``/``webp`` bytes, or raw uint8 ``npy``) and
are decoded and augmented in the loader worker by the images module's batcher.

With ``batch_size`` set, the dataset yields collated batches, and every rank yields the
same number of them in an epoch (the most any rank needs): a rank holding fewer samples
makes its batches a little smaller rather than fewer. DDP needs equal step counts on
every rank (a rank that stops early leaves the others waiting in all-reduce), and this
keeps them equal without dropping or repeating a sample. With ``batch_tokens`` instead
(text: shards that record their ``tokens``), batches hold about that many tokens, samples
bucketed by length by the dataset's batcher (``components/data/batching.py``); the step count
is agreed the same way, from the tokens each rank's shards hold.

On a cluster, the train and tune stages ``publish`` a shard directory under the storage
root (``<root>/shards/<dataset>-<data version>``), and each worker reads it through
``localize``: straight from a path or ``file://`` URL (a shared mount), or from a copy
made once per node and version (an object store).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import math
import platform
import random
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from filelock import FileLock
from torch.utils.data import IterableDataset, get_worker_info

from components.data.manifest import DataError, sha256
from components.data.splits import SPLITS
from components.data.writer import STATS
from components.training import storage

SHUFFLE_BUFFER = 2048  # samples a loader worker holds to shuffle its stream (encoded, before decoding)


def stats_path(shard_dir: Path) -> Path:
    """``shard_dir``'s ``stats.json``; a directory without one (never preprocessed, or a
    preprocess cut short: the file is written last) fails with the command that writes it."""
    path = Path(shard_dir) / STATS
    if not path.exists():
        name = Path(shard_dir).name
        raise DataError(f"{path}: not found, so {shard_dir} holds no complete shard set; write it with "
                        f"`dvc repro preprocess-{name}` (or `python -m pipelines.preprocess --dataset {name}`)")
    return path


def read_stats(shard_dir: Path) -> dict:
    return json.loads(stats_path(shard_dir).read_text())


def publish(shard_dir: Path, url: str) -> str:
    """Copy a shard directory to ``url`` under the storage root, unless it is there already.

    ``url`` should name the data version (``<root>/shards/<dataset>-<version>``), so a copy is
    made once per version. Every shard is checked against its size and sha256 first, so a
    corrupt local file never reaches the cluster. ``stats.json``, which lists every shard's
    sha256, goes last: its presence with the same text marks the copy complete. Returns ``url``.
    """
    text = (Path(shard_dir) / STATS).read_text()
    if storage.read_text(storage.join(url, STATS)) != text:
        verify_shards(Path(shard_dir))
        storage.put_tree(shard_dir, url, last=STATS)
    return url


def verify_shards(shard_dir: Path) -> None:
    """Every shard of every split against the size and sha256 that ``stats.json`` lists."""
    for split in read_stats(shard_dir)["splits"].values():
        for entry in split["shards"]:
            path = shard_dir / entry["file"]
            if not path.exists():
                raise DataError(f"{path}: shard not found; {rebuild_hint(shard_dir)}")
            if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
                raise DataError(f"{path}: shard is corrupt (size or sha256 differ from stats.json); "
                                f"{rebuild_hint(shard_dir)}")


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
            raise DataError(f"{local}: no shards on node {platform.node()}; create them with `dvc repro "
                            f"{preprocess_stage(local)}`, and on a multi-node cluster set runtime.storage_root to a "
                            f"shared mount or URL: train and tune then publish the shards there, where every node "
                            f"can read them")
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


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


def load_npy(raw: bytes) -> np.ndarray:
    """An ``.npy`` member as an array. Samples of a field share a few headers (one shape for
    images, one per length for token ids): a header seen before skips ``np.load``'s parsing,
    which costs about 30x the copy of a 32x32x3 image."""
    if raw[:8] == b"\x93NUMPY\x01\x00":
        start = 10 + int.from_bytes(raw[8:10], "little")
        known = _NPY_HEADERS.get(raw[10:start])
        if known is not None:
            dtype, shape = known
            return np.frombuffer(raw, dtype, offset=start).reshape(shape).copy()
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    if raw[:8] == b"\x93NUMPY\x01\x00" and array.flags.c_contiguous and len(_NPY_HEADERS) < 4096:
        _NPY_HEADERS[raw[10:10 + int.from_bytes(raw[8:10], "little")]] = (array.dtype, array.shape)
    return array


def _decode_field(name: str, raw: bytes) -> Any:
    if name == "npy" or name.endswith(".npy"):
        return torch.from_numpy(load_npy(raw))
    if name == "cls" or name.endswith(".cls"):
        return int(raw)
    if name.endswith(".txt"):
        return raw.decode("utf-8")
    if name.rpartition(".")[2] in IMAGE_EXTENSIONS:
        return raw  # encoded image: the dataset's transform decodes it in the loader worker
    raise KeyError(f"field {name!r} has no decoder (use .npy, .cls, .txt or an image extension)")


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def preprocess_stage(shard_dir: str | Path) -> str:
    """The stage that writes ``shard_dir``: ``preprocess-<name>`` for the pipeline's
    ``data/shards/<name>``; elsewhere (shards copied from a URL) the one of its dataset."""
    shard_dir = Path(shard_dir)
    return f"preprocess-{shard_dir.name}" if shard_dir.parent.name == "shards" else "preprocess-<dataset>"


def rebuild_hint(shard_dir: str | Path) -> str:
    """What to run when a file under ``shard_dir`` is missing or corrupt."""
    return (f"re-create it with `dvc repro --force {preprocess_stage(shard_dir)}` "
            f"(or `dvc checkout` if it is DVC-tracked)")


class _HashingReader(io.RawIOBase):
    """A file read once front to back, hashed as its bytes pass (so a shard is verified while it streams)."""

    def __init__(self, f):
        self.f, self.digest, self.read_bytes = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.read_bytes += n
        return n

    def finish(self) -> str:
        while self.read(1 << 20):  # tar padding after the last member
            pass
        return self.digest.hexdigest()


_ZERO_BLOCK = bytes(512)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    out, i = {}, 0
    while i < len(data):
        length = int(data[i:data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1:i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "replace")
        i += length
    return out


def tar_members(stream: Any) -> Iterator[dict]:
    """``{"fname", "data"}`` of every regular file in a tar stream (ustar, GNU long names, pax),
    as webdataset's ``tar_file_iterator`` yields them, at a few microseconds a member.

    Python's tarfile spends ~100 us parsing each header, which is most of the cost of reading
    a small sample (a 32x32 image, a sentence's token ids); the shards' tars are plain, so
    their 512-byte headers are read here directly, each one's checksum verified.
    """
    long_name, pax = None, {}
    while True:
        header = stream.read(512)
        if len(header) < 512 or header == _ZERO_BLOCK:
            if 0 < len(header) < 512:
                raise EOFError("tar ends inside a header")
            return
        if _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError(f"tar header checksum mismatch near member {header[:100].rstrip(bytes(1))!r}")
        size = int(pax.get("size", _octal(header[124:136])))
        flag = header[156:157]
        data = stream.read(size)
        if len(data) < size:
            raise EOFError(f"tar member {header[:100].rstrip(bytes(1))!r} is cut short")
        if size % 512:
            stream.read(512 - size % 512)
        if flag == b"L":
            long_name = data.rstrip(b"\0").decode()
        elif flag == b"x":
            pax = _pax_records(data)
        elif flag in (b"0", b"\0", b"7"):
            name = header[:100].split(b"\0", 1)[0].decode()
            if header[257:262] == b"ustar" and header[345] != 0:
                name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
            name = pax.get("path") or long_name or name
            long_name, pax = None, {}
            yield {"fname": name, "data": data}
        else:  # directories, links, global pax headers: nothing to read
            long_name, pax = None, {}


def _pick(sample: dict, spec: str) -> tuple[str, Any]:
    """The field ``spec`` of a grouped tar sample; ``spec`` may list alternatives (``jpg;png;npy``)."""
    for name in spec.split(";"):
        if name in sample:
            return name, sample[name]
    raise KeyError(spec)


def iter_shard(path: Path, expected: dict | None = None,
               fields: Sequence[str] = ("input.npy", "target.cls"), keys: bool = False) -> Iterator[tuple]:
    """The samples of one shard as tuples of ``fields``, streamed member by member.

    ``expected`` (the shard's entry in ``stats.json``): the size is checked before the first
    sample and the sha256 and sample count after the last. A missing, truncated or corrupt
    file raises DataError naming it, and the sample's key when one field is bad. With ``keys``,
    yields ``(key, sample)`` pairs.
    """
    fix = rebuild_hint(path.parent)
    if not path.exists():
        raise DataError(f"{path}: shard not found; {fix}")
    if expected is not None and path.stat().st_size != expected["bytes"]:
        raise DataError(f"{path}: shard is corrupt or truncated (size {path.stat().st_size} bytes, stats.json "
                        f"says {expected['bytes']}); {fix}")
    count = 0
    with open(path, "rb", buffering=0) as raw:
        hashed = _HashingReader(raw)
        buffered = io.BufferedReader(hashed, 1 << 20)
        try:
            stream = gzip.GzipFile(fileobj=buffered, mode="rb") if buffered.peek(2)[:2] == b"\x1f\x8b" else buffered
            files = ({**f, "__url__": str(path)} for f in tar_members(stream))
            for s in wds.tariterators.group_by_keys(files):
                key = s.get("__key__")
                try:
                    picked = [_pick(s, f) for f in fields]
                    sample = tuple(_decode_field(name, value) for name, value in picked)
                except KeyError as exc:
                    have = sorted(k for k in s if not k.startswith("__"))
                    raise DataError(f"{path}: sample {key!r} has fields {have}, not {exc.args[0]!r}; {fix}") from None
                except ValueError as exc:
                    raise DataError(f"{path}: sample {key!r} cannot be decoded ({exc}); {fix}") from None
                count += 1
                yield (key, sample) if keys else sample
            if stream is not buffered:
                stream.read()  # the rest of the gzip stream, its CRC checked
            digest = hashed.finish()
        except (tarfile.TarError, EOFError, OSError, ValueError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{path}: cannot read shard ({type(exc).__name__}: {exc}); {fix}") from None
    if expected is not None:
        if digest != expected["sha256"]:
            raise DataError(f"{path}: shard is corrupt (its sha256 differs from stats.json); {fix}")
        if count != expected["samples"]:
            raise DataError(f"{path}: holds {count} samples, stats.json says {expected['samples']}; {fix}")


def read_shard(path: Path, expected: dict | None = None,
               fields: Sequence[str] = ("input.npy", "target.cls")) -> list[tuple]:
    """All samples of one shard (see :func:`iter_shard`)."""
    return list(iter_shard(path, expected, fields))


@dataclass(frozen=True)
class BatchOptions:
    """What a reader asks of a dataset's batcher; each dataset module uses the options that apply to it.

    Args:
        augment: the training transform (images: random crops and flips) instead of the evaluation one.
        uint8_images: images cross from a loader worker (and to a GPU) as uint8 pixels, 4x fewer
            bytes; :meth:`Batcher.on_device` scales them to [0, 1] floats where they arrive.
        fanout: node tasks of graphs: neighbours sampled per hop around each batch's seed nodes
            (empty or None: the whole graph).
    """
    augment: bool = False
    uint8_images: bool = False
    fanout: tuple[int, ...] | None = None


class Batcher:
    """How a dataset's samples become what a model takes. A dataset module's
    ``batcher(stats, shard_dir, options)`` returns one for its shards; this default collates
    the fields as read (:func:`collate`). Runs in the reading process (a loader worker): picklable.

    The reader calls :meth:`decode` on each sample as it leaves the shuffle buffer (a bad sample
    is named by shard and key), then :meth:`single` (unbatched reading) or :meth:`batch` on a
    batch's samples. A batcher with :meth:`token_groups` makes token-budget batches. The
    training loop calls :meth:`on_device` on each batch where the model is, :meth:`tally` on each
    batch it trains on, and :meth:`summarize` on an epoch's sums of the tallies.
    """

    def decode(self, sample: tuple, rng: random.Random) -> tuple:
        return sample

    def single(self, sample: tuple, rng: random.Random) -> tuple:
        return sample

    def batch(self, samples: list[tuple], rng: random.Random, generator: torch.Generator) -> tuple:
        return collate(samples)

    token_groups = None  # (samples, batches=, count=, tokens=, min_pool=, rng=) -> Iterator[list[tuple]]

    def on_device(self, batch: tuple) -> tuple:
        return batch

    def tally(self, batch: tuple) -> tuple[float, ...]:
        return ()

    def summarize(self, sums: Sequence[float]) -> dict[str, float]:
        return {}


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """``total`` split into integers in proportion to ``weights`` (largest remainder, in exact
    arithmetic), each at most its cap and at least 1 where its cap allows and ``total`` suffices;
    ``sum(caps) >= total`` is the caller's."""
    if sum(caps) < total:
        raise ValueError(f"cannot deal {total} over caps {list(caps)}")
    weight = sum(Fraction(w) for w in weights) or Fraction(1)
    exact = [total * Fraction(w) / weight for w in weights]
    share = [min(cap, max(1 if cap else 0, math.floor(e))) for e, cap in zip(exact, caps)]
    # Too many (the floor of 1): take from the largest; too few: give where the remainder is largest.
    while sum(share) > total:
        share[max(range(len(share)), key=lambda i: share[i])] -= 1
    order = sorted(range(len(share)), key=lambda i: share[i] - exact[i])
    while sum(share) < total:
        for i in order:
            if sum(share) < total and share[i] < caps[i]:
                share[i] += 1
    return share


class ShardDataset(IterableDataset):
    """One split of a shard directory as an iterable of samples (tuples of fields).

    Args:
        shard_dir: directory with the shards and ``stats.json``.
        split: ``train``, ``val`` or ``test``.
        rank, world_size: this Ray Train worker's place in the group (a shuffled split's shards are
            dealt by rank, an unshuffled one's samples by range: :meth:`shards_for`).
        shuffle: reshuffle shard order and samples every epoch (call :meth:`set_epoch`).
        seed: base seed of all shuffles.
        batch_size: yield collated batches (see :func:`collate`), equally many on every rank;
            ``None`` yields single samples. Use with ``DataLoader(ds, batch_size=None)``.
        batch_tokens: yield batches of about this many tokens (the 1-D sequence fields' lengths,
            before padding) instead, equally many on every rank, samples bucketed by length in
            pools of :data:`batching.POOL_BATCHES` batches (at least ``shuffle_buffer`` samples).
            Needs shards that record their ``tokens`` (text datasets' preprocess writes them).
        fields: the fields of a sample, in order; default ``stats.json["fields"]``.
        augment, uint8_images, fanout: the :class:`BatchOptions` handed to the dataset's batcher
            (the training transform of images, uint8 pixels, a node task's neighbour sampling).
        shuffle_buffer: samples held to shuffle a worker's stream (with ``shuffle``).
        cache_bytes: keep read shards' samples in memory, up to this many bytes per reading
            process (the trainer, or each loader worker), and read them from there in later
            epochs in the same order: a small dataset reads like in-memory tensors after the
            first epoch, a large one streams as before with memory bounded by the budget.
            A cached shard was verified (size, sha256, count) when it was read. With loader
            workers the cache lives as long as they do (``persistent_workers``).
        max_shards: read only the split's first this many shards (a tune trial's cheaper epoch;
            shards are drawn at random at preprocess, so the first ones are a random part).

        make_batcher: ``(stats, shard_dir, options) -> Batcher``, a dataset module's ``batcher``:
            what a sample or batch becomes (``components.data.registry.open_split`` passes the module
            that wrote the shards). None: the fields collated as read (:class:`Batcher`); this reader
            knows no data type.

    ``self.batcher`` is the batcher made for these options, whose :meth:`Batcher.on_device`,
    :meth:`Batcher.tally` and :meth:`Batcher.summarize` the training loop calls.
    """

    def __init__(self, shard_dir: str | Path, split: str, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, batch_size: int | None = None,
                 fields: Sequence[str] | None = None, fanout: Sequence[int] | None = None,
                 augment: bool = False, shuffle_buffer: int = SHUFFLE_BUFFER, uint8_images: bool = False,
                 cache_bytes: int = 0, max_shards: int | None = None, batch_tokens: int | None = None,
                 make_batcher: Callable[[dict, Path, BatchOptions], Batcher] | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.shard_dir = Path(shard_dir)
        self.split, self.rank, self.world_size = split, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        # The epoch lives in shared memory: persistent loader workers keep their copy of this
        # object across epochs, and read the epoch the trainer set from here.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple[str, int, int], list] = {}  # (file, first, stop) -> (key, sample)
        self._cached_bytes = 0
        self.batch_size = batch_size
        stats = read_stats(self.shard_dir)
        if split not in stats["splits"]:
            raise DataError(f"{self.shard_dir / STATS}: has no split {split!r}; re-run preprocess")
        self.shards: list[dict] = stats["splits"][split]["shards"][:max_shards]
        self.fields = tuple(fields or stats.get("fields") or ("input.npy", "target.cls"))
        self.batch_tokens = batch_tokens or None
        self.records_tokens = bool(self.shards) and all("tokens" in e for e in self.shards)
        if self.batch_tokens and not self.records_tokens:
            raise DataError(f"{self.shard_dir / STATS}: split {split!r} records no tokens per shard, so batch_tokens "
                            f"cannot be used with it; set batch_size instead (batch_tokens is for text datasets)")
        if shuffle and len(self.shards) < world_size:
            raise DataError(f"{self.shard_dir / STATS}: split {split!r} has {len(self.shards)} shards, fewer than "
                            f"{world_size} workers; lower samples_per_shard in params.yaml data section")
        options = BatchOptions(augment=augment, uint8_images=uint8_images,
                               fanout=tuple(fanout) if fanout is not None else None)
        self.batcher = make_batcher(stats, self.shard_dir, options) if make_batcher else Batcher()
        if self.batch_tokens and self.batcher.token_groups is None:
            raise DataError(f"{self.shard_dir / STATS}: dataset {stats.get('dataset')!r} makes no token-budget "
                            f"batches; set batch_size instead (batch_tokens is for text datasets)")
        self.shuffle_buffer = max(1, shuffle_buffer)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def shards_for(self, worker: int = 0, num_workers: int = 1, rank: int | None = None) -> list[dict]:
        """The shards that ``(rank, worker)`` reads in the current epoch, each with the range
        ``[first, stop)`` of its samples that are this rank's.

        A shuffled split deals whole shards to the ranks, in an order drawn per epoch (each
        shard read by one rank). An unshuffled split (val, test) is dealt by sample: rank r
        takes samples ``[r * N // W, (r + 1) * N // W)`` of the split in shard order, so every
        rank evaluates within one sample of the same count whatever the shard count (with
        whole shards, 3 shards over 2 ranks left one rank twice the work); a shard on a
        boundary between two ranks is read by both, each keeping its part.
        """
        rank = self.rank if rank is None else rank
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
            mine = [{**e, "first": 0, "stop": e["samples"]} for e in order[rank::self.world_size]]
        else:
            total = sum(e["samples"] for e in order)
            lo, hi = rank * total // self.world_size, (rank + 1) * total // self.world_size
            mine, start = [], 0
            for e in order:
                first, stop = max(lo - start, 0), min(hi - start, e["samples"])
                if first < stop:
                    mine.append({**e, "first": first, "stop": stop})
                start += e["samples"]
        return mine[worker::num_workers]

    def num_samples(self, rank: int | None = None) -> int:
        """Samples a rank (default: this one) sees in the current epoch, over all its loader workers."""
        return _count(self.shards_for(rank=rank))

    def num_batches(self) -> int:
        """Batches every rank yields in the current epoch."""
        ranks = range(self.world_size)
        if self.batch_tokens:
            # As many as the rank with the most tokens needs, and no more than the fewest samples allow.
            need = max(math.ceil(_tokens(self.shards_for(rank=r)) / self.batch_tokens) for r in ranks)
            return max(1, min(need, *(self.num_samples(r) for r in ranks)))
        if self.batch_size is None:
            raise ValueError("num_batches needs batch_size or batch_tokens")
        return max(math.ceil(self.num_samples(r) / self.batch_size) for r in ranks)

    def _batches_for_worker(self, worker: int, num_workers: int) -> int:
        """This worker's share of the rank's batches, proportional to its samples (tokens with
        ``batch_tokens``)."""
        total = self.num_batches()
        entries = [self.shards_for(w, num_workers) for w in range(num_workers)]
        counts = [_count(e) for e in entries]
        n = sum(counts)
        if n < total:
            raise DataError(f"split {self.split!r}: rank {self.rank} has {n} samples, too few for {total} batches; "
                            f"use fewer workers or a larger samples_per_shard")
        share = apportion(total, [_tokens(e) for e in entries] if self.batch_tokens else counts, counts)
        if any(c and not s for c, s in zip(counts, share)):
            size = f"batch_tokens {self.batch_tokens}" if self.batch_tokens else f"batch_size {self.batch_size}"
            raise DataError(f"split {self.split!r}: rank {self.rank}'s {total} batches of {size} are fewer than its "
                            f"{sum(map(bool, counts))} loader workers with data; lower {size.split()[0]} or loader_workers")
        return share[worker]

    def _stream(self, entries: list[dict]) -> Iterator[tuple[str, str, tuple]]:
        for entry in entries:
            file, first, stop = entry["file"], entry["first"], entry["stop"]
            cached = self._cache.get((file, first, stop))
            if cached is not None:
                for key, sample in cached:
                    yield file, key, sample
                continue
            keep = [] if self._cached_bytes < self.cache_bytes else None
            size = 0
            # The whole shard is read (its sha256 and count are checked at the end); the rank's range is kept.
            for i, (key, sample) in enumerate(iter_shard(self.shard_dir / file, entry, self.fields, keys=True)):
                if not first <= i < stop:
                    continue
                if keep is not None:
                    size += _sample_bytes(sample)
                    keep = keep if self._cached_bytes + size <= self.cache_bytes else None
                    if keep is not None:
                        keep.append((key, sample))
                yield file, key, sample
            if keep is not None:  # the shard was read to its end and verified: it may be kept
                self._cache[(file, first, stop)] = keep
                self._cached_bytes += size

    def _decoded(self, samples: Iterator[tuple[str, str, tuple]], rng: random.Random) -> Iterator[tuple]:
        """The batcher's decoding of each sample; a sample it cannot decode is named by shard and key."""
        decode = self.batcher.decode
        for file, key, sample in samples:
            try:
                yield decode(sample, rng)
            except DataError as exc:
                raise DataError(f"{self.shard_dir / file}: sample {key!r}: {exc}; fix or drop the source sample and "
                                f"re-run `dvc repro {preprocess_stage(self.shard_dir)}`") from None

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        entries = self.shards_for(worker, num_workers)
        stream_seed = f"{self.seed}/{self.epoch}/{self.rank}/{worker}"
        stream: Iterator[tuple[str, str, tuple]] = self._stream(entries)
        if self.shuffle:
            stream = wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                         rng=random.Random(stream_seed))(stream)
        # Augmentation draws from its own stream, fixed by (seed, epoch, rank, worker), and a batcher that
        # samples (a graph's neighbours) from a generator seeded alike: an epoch replays exactly.
        rng = random.Random(f"{stream_seed}/augment")
        samples = self._decoded(stream, rng)
        batcher = self.batcher
        if self.batch_size is None and not self.batch_tokens:
            return (batcher.single(sample, rng) for sample in samples)
        n = _count(entries)
        n_batches = self._batches_for_worker(worker, num_workers)
        if self.batch_tokens:
            if not n:
                return iter(())
            groups = batcher.token_groups(samples, batches=n_batches, count=n, tokens=_tokens(entries),
                                          min_pool=self.shuffle_buffer, rng=rng)
        else:
            sizes = np.diff(np.linspace(0, n, n_batches + 1).round()).astype(int).tolist()
            groups = (list(itertools.islice(samples, size)) for size in sizes)
        generator = torch.Generator().manual_seed(zlib.crc32(stream_seed.encode()))
        return self._batches(groups, samples, lambda group: batcher.batch(group, rng, generator))

    @staticmethod
    def _batches(groups: Iterator[list[tuple]], samples: Iterator[tuple], make: Any) -> Iterator[Any]:
        for group in groups:
            yield make(group)
        for _ in samples:  # runs the last shard's checks (sha256, sample count) after its last sample
            raise DataError("a shard holds more samples than stats.json says; re-run preprocess")


def _count(entries: list[dict]) -> int:
    """Samples in entries of ``ShardDataset.shards_for`` (each its ``[first, stop)`` of a shard)."""
    return sum(e["stop"] - e["first"] for e in entries)


def _tokens(entries: list[dict]) -> float:
    """Tokens in entries of ``ShardDataset.shards_for``: a part of a shard counts its share."""
    return sum(e["tokens"] * (e["stop"] - e["first"]) / max(e["samples"], 1) for e in entries)


def _sample_bytes(sample: tuple) -> int:
    """About how many bytes a decoded sample holds (for the shard cache's budget)."""
    total = 64
    for v in sample:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (bytes, str)):
            total += len(v)
        else:
            total += 32
    return total


def collate(samples: list[tuple]) -> tuple:
    """Batch samples field by field: stack tensors (padding 1-D ones of unequal length with 0),
    ints to a long tensor, strings to a list."""
    return tuple(_collate_field(list(values)) for values in zip(*samples))


def pad_sequences(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """1-D tensors as one (N, longest) tensor, padded with 0 at the end (token id 0 is padding)."""
    if not values:
        return torch.zeros(0, 1, dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(list(values), batch_first=True, padding_value=0)


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
