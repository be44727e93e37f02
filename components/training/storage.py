"""Run state under one storage root: a local path, a shared mount, or a URL fsspec handles.

Epoch checkpoints and step/epoch tables of a run live at ``<storage_root>/runs/...``; the
root may be ``/mnt/shared/runs``, ``file:///...``, ``s3://bucket/prefix`` or ``gs://...``
(with s3fs/gcsfs installed). Ray Train persists its own results to the same root through
pyarrow. Paths are strings joined with ``/`` so a URL stays a URL.

Writes publish whole objects only: a file goes to a temporary name and is renamed (local),
or is one PUT (object stores, where a PUT is atomic); a local folder is built aside and
renamed (``written_whole``); a checkpoint directory on an object store counts as written
only once its last file, ``config.json``, is there. Tables of JSON lines are appended a whole
write at a time (``append_text``). Temporaries carry ``.tmp-`` in their
name, so whoever clears a folder can tell a killed writer's debris from output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def resolve(url: str) -> tuple[Any, str]:
    """(filesystem, path inside it) for a local path or a URL."""
    return fsspec.core.url_to_fs(str(url))


def join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *(str(p).strip("/") for p in parts)])


def local_path(url: str) -> str | None:
    """The path on this machine's disk for a local path or ``file://`` URL, else None."""
    fs, path = resolve(url)
    return path if isinstance(fs, LocalFileSystem) else None


def exists(url: str) -> bool:
    fs, path = resolve(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = resolve(url)
    fs.makedirs(path, exist_ok=True)


def read_text(url: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, path = resolve(url)
    try:
        with fs.open(path, "r") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_bytes(url: str, data: bytes) -> None:
    """Replace the file with ``data`` in one step: readers see the old or the new content."""
    fs, path = resolve(url)
    parent = path.rsplit("/", 1)[0]
    if isinstance(fs, LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode())


def append_text(url: str, text: str) -> None:
    """Append whole lines to a table: on a local disk one ``write`` to a file opened for
    appending (concurrent appenders never interleave inside it, and its cost does not grow
    with the table); object stores have no append, so there it is read and rewritten."""
    if not text:
        return
    fs, path = resolve(url)
    if not isinstance(fs, LocalFileSystem):
        write_text(url, (read_text(url) or "") + text)
        return
    os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode()
        while data:  # a regular file takes it in one write; loop in case it does not
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def remove(url: str) -> None:
    """Delete a file or a directory tree; nothing there is fine."""
    fs, path = resolve(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def listdir(url: str) -> list[str]:
    """Names (not paths) of the entries directly under ``url``; empty when it does not exist."""
    fs, path = resolve(url)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def open_file(url: str, mode: str = "rb"):
    fs, path = resolve(url)
    if "w" in mode:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    return fs.open(path, mode)


TMP_MARK = ".tmp-"  # in the name of every temporary this module makes


@contextlib.contextmanager
def written_whole(path: str | Path) -> Iterator[Path]:
    """Build a local folder in a temporary place and rename it to ``path`` at the end.

    An interrupted writer (Ctrl-C, a crash) leaves the previous folder or none, never half of
    one; the temporary is removed on the way out (a SIGKILL leaves ``.<name>.tmp-<pid>``
    beside ``path``, which ``checkpoint.prune`` and a re-run of the writer clear). The folder
    yielded is ``<parent>/.<name>.tmp-<pid>/<name>``, so code that names files after the
    folder (``plot_dir.name``) sees the real name.
    """
    path = Path(path)
    holder = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(holder, ignore_errors=True)
    tmp = holder / path.name
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def put_tree(local_dir: str | Path, url: str, last: str) -> None:
    """Copy the files under ``local_dir`` to ``url``, the top-level file ``last`` after all others.

    A reader that waits for ``last`` never sees a partial copy. Files already there with the
    same size are skipped: a content-addressed tree (its name holds its hash) is copied once,
    and a copy interrupted halfway resumes.
    """
    fs, path = resolve(url)
    path = path.rstrip("/")
    base = Path(local_dir)
    files = {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file()}
    try:  # one listing, not a request per file
        have = {p: info["size"] for p, info in fs.find(path, detail=True).items()}
    except FileNotFoundError:
        have = {}
    for rel in sorted(files, key=lambda r: (r == last, r)):
        target = f"{path}/{rel}"
        if have.get(target) == files[rel].stat().st_size:
            continue
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(files[rel]), target)


def get_tree(url: str, local_dir: str | Path) -> int:
    """Copy every file under ``url`` into ``local_dir`` (which exists); returns how many."""
    fs, path = resolve(url)
    prefix = path.rstrip("/") + "/"
    found = [p for p in fs.find(path) if p.startswith(prefix)]
    for p in found:
        target = Path(local_dir) / p[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(p, str(target))
    return len(found)
