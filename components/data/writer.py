"""Writing WebDataset shards: a split's samples into near-equal tar shards, and ``stats.json``.

A sample is a ``__key__`` and fields named by extension (``input.npy``, ``target.cls``,
``src.txt``); each field becomes a tar member ``<key>.<field>``, as WebDataset writes them
(:class:`TarSink` writes byte for byte what ``webdataset.TarWriter`` does, several times faster).
Reading is ``components/data/shards.py``; this module imports no other part of the project but
the manifest's checksum, so a dataset module that writes shards never imports the reader.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.data.manifest import sha256

STATS = "stats.json"


def shard_name(split: str, i: int, compress: bool = False) -> str:
    return f"{split}-{i:06d}.tar" + (".gz" if compress else "")


_BLOCK, _RECORD = 512, 10240  # tar's block, and the record its stream is padded to at its end
_OWNER = b"bigdata".ljust(32, b"\0")
# A ustar header is name[100] mode uid gid size[12] mtime[12] chksum[8] type linkname[100] magic
# uname gname devmajor devminor prefix[155], padded to 512; only the name and size vary here.
_MODE_IDS = b"0000444\0" + b"0000000\0" * 2
_AFTER_SIZE = b"00000000000\0"
_TAIL = (b"0" + b"\0" * 100 + b"ustar\x0000" + _OWNER + _OWNER + b"\0" * 16 + b"\0" * 155).ljust(_BLOCK - 156, b"\0")
_FIXED_SUM = sum(_MODE_IDS) + sum(_AFTER_SIZE) + sum(_TAIL) + 8 * ord(" ")  # the checksum counts itself as spaces


def _member_header(name: str, size: int) -> bytes:
    """The ustar header of a regular file, mode 0444, owner bigdata, mtime 0: the header
    Python's tarfile writes for it in its default (PAX) format, built directly (tarfile spends
    ~100 µs a member in its PAX machinery; a text shard's members are a few dozen bytes each)."""
    raw = name.encode("utf-8")
    if len(raw) >= 100 or not name.isascii():  # long or non-ASCII: tarfile's extended headers
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "bigdata", "bigdata"
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return b"".join((raw.ljust(100, b"\0"), _MODE_IDS, size_field, _AFTER_SIZE, b"%06o\0 " % checksum, _TAIL))


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def _npy_bytes(value: np.ndarray) -> bytes:
    """``value`` in numpy's ``.npy`` format; its header (numpy's own) is made once per dtype and shape."""
    if value.dtype.hasobject or not value.flags.c_contiguous:
        return _npy_written(value)
    key = (value.dtype.str, value.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        written = _npy_written(value)
        header = written[:len(written) - value.nbytes]
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[key] = header
    return header + value.tobytes()


def _npy_written(value: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, value)
    return out.getvalue()


def _field_bytes(field: str, value: Any) -> bytes:
    """A field's bytes, as WebDataset encodes it by extension: bytes as they are, str as UTF-8,
    ``.npy`` arrays in numpy's format, ``.cls`` ints as decimal text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    ext = field.rsplit(".", 1)[-1]
    if ext == "npy":
        return _npy_bytes(np.asarray(value))
    if ext == "cls":
        return str(int(value)).encode("ascii")
    raise ValueError(f"field {field!r}: cannot encode a {type(value).__name__} (give bytes, str, a .npy array "
                     f"or a .cls int)")


class TarSink:
    """Writes WebDataset samples to a binary stream: a ``__key__`` and fields by extension, each
    field a member ``<key>.<field>`` in sorted order. Byte for byte what ``webdataset.TarWriter(stream,
    mtime=0)`` writes (a test holds it to that), several times faster on small members."""

    def __init__(self, stream: Any):
        self.stream, self.offset = stream, 0

    def write(self, sample: dict) -> None:
        key, parts = sample["__key__"], []
        for field in sorted(sample):
            if not field.startswith("_"):
                data = _field_bytes(field, sample[field])
                parts += (_member_header(f"{key}.{field}", len(data)), data, b"\0" * (-len(data) % _BLOCK))
        members = b"".join(parts)  # one write a sample: a gzip stream's write has its own cost
        self.stream.write(members)
        self.offset += len(members)

    def close(self) -> None:
        end = self.offset + 2 * _BLOCK
        self.stream.write(b"\0" * (2 * _BLOCK + -end % _RECORD))


class SplitWriter:
    """Writes one split's samples, as they come, into near-equal shards (sizes differ by at most one).

    ``total`` samples are expected; ``write`` takes a WebDataset sample dict (``__key__`` and
    fields by extension); ``close`` returns the ``stats.json`` entries of the shards. ``compress``
    gzips each shard (``.tar.gz``): worth it for many small members (a sentence pair is ~60 bytes
    of data in 2 KB of tar headers and padding); readers detect it by itself.
    """

    def __init__(self, out_dir: Path, split: str, total: int, samples_per_shard: int, compress: bool = False,
                 compresslevel: int = 9):
        self.out_dir, self.split, self.compress, self.level = Path(out_dir), split, compress, compresslevel
        n_shards = max(1, math.ceil(total / samples_per_shard))
        self.bounds = np.linspace(0, total, n_shards + 1).round().astype(int)
        self.total, self.count, self.entries = total, 0, []
        self.tokens: int | None = None  # the shard's tokens, when the writer is told them
        self._open(0)

    def _open(self, i: int) -> None:
        self.index, self.path = i, self.out_dir / shard_name(self.split, i, self.compress)
        self._raw = open(self.path, "wb")
        # mtime=0 in tar and gzip headers: byte-identical reruns.
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, compresslevel=self.level) \
            if self.compress else None
        self._sink = TarSink(self._gz or self._raw)
        self.tokens = None if self.tokens is None else 0

    def _close_shard(self) -> None:
        self._sink.close()
        if self._gz is not None:
            self._gz.close()
        self._raw.close()
        self.entries.append({"file": self.path.name, "samples": int(self.bounds[self.index + 1] - self.bounds[self.index]),
                             **({} if self.tokens is None else {"tokens": self.tokens}),
                             "bytes": self.path.stat().st_size, "sha256": sha256(self.path)})

    def __len__(self) -> int:
        return self.count

    def write(self, sample: dict, tokens: int | None = None) -> None:
        """Write one sample; ``tokens`` (its sequences' length, given for every sample or none)
        is summed per shard into ``stats.json`` for token-budget batches."""
        if self.count >= self.total:
            raise ValueError(f"split {self.split!r}: more than the {self.total} samples announced")
        if self.count == self.bounds[self.index + 1]:
            self._close_shard()
            self._open(self.index + 1)
        self._sink.write(sample)
        if tokens is not None:
            self.tokens = (self.tokens or 0) + int(tokens)
        self.count += 1

    def close(self) -> list[dict]:
        if self.count != self.total:
            raise ValueError(f"split {self.split!r}: {self.count} samples written, {self.total} announced")
        self._close_shard()
        return self.entries


def write_split(out_dir: Path, split: str, columns: dict[str, Sequence], samples_per_shard: int,
                compress: bool = False, compresslevel: int = 9) -> list[dict]:
    """Write one split from columns: a field name (``input.npy``, ``target.cls``, ``src.txt``...)
    to one value per sample, all of the same length (see :class:`SplitWriter`)."""
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"split {split!r}: fields have different lengths {lengths}")
    n = next(iter(lengths.values()))
    writer = SplitWriter(out_dir, split, n, samples_per_shard, compress, compresslevel)
    for j in range(n):
        writer.write({"__key__": f"{split}{j:07d}", **{k: _encode(k, v[j]) for k, v in columns.items()}})
    return writer.close()


def _encode(field: str, value: Any) -> Any:
    if field == "cls" or field.endswith(".cls"):
        return int(value)
    return value  # .npy arrays and .txt strings: webdataset's writer encodes them by extension


def write_shards(out_dir: Path, splits: dict[str, dict[str, Sequence]], samples_per_shard: int, meta: dict,
                 fields: Sequence[str] | None = None, split_meta: dict[str, dict] | None = None,
                 compress: bool = False, compresslevel: int = 9) -> dict:
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
    shards = {split: write_split(out_dir, split, columns, samples_per_shard, compress, compresslevel)
              for split, columns in splits.items()}
    return write_stats(out_dir, shards, meta, fields or list(first), split_meta)


def write_stats(out_dir: Path, shards: dict[str, list[dict]], meta: dict, fields: Sequence[str],
                split_meta: dict[str, dict] | None = None) -> dict:
    """Write ``stats.json`` (last: a directory without it was never finished) from each split's
    shard entries (:meth:`SplitWriter.close`); returns the stats."""
    stats: dict = {**meta, "fields": list(fields), "splits": {}}
    for split, entries in shards.items():
        stats["splits"][split] = {"samples": sum(e["samples"] for e in entries), "shards": entries,
                                  **(split_meta or {}).get(split, {})}
    (Path(out_dir) / STATS).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats
