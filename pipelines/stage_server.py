"""The stage server: imports what stages spend their start-up on, then forks one process per stage
that ``pipelines.stage`` (the client) hands it. See that module's docstring.

    python -m pipelines.stage_server SOCKET   # started by the first client, not by hand

The server keeps a log next to its socket (``SOCKET.log``): what it imported and how long it
took, each stage it started and how that stage ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

from pipelines.stage import PRELOAD, PROJECT_PACKAGES

IDLE_S = float(os.environ.get("M7_STAGE_SERVER_IDLE", "60"))


def serve(path: str) -> None:
    os.chdir("/")  # the folder it was started in may go; each stage takes its client's
    log = open(f"{path}.log", "a", buffering=1)
    lock = open(f"{path}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server holds this socket (or is starting): the client reaches that one
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a server that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)  # clients that connect now wait for the imports below
    t0 = time.perf_counter()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional package: the stage imports it itself, or fails there
            log.write(f"preload {name}: {type(exc).__name__}: {exc}\n")
    _drop_project_modules()
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    log.write(f"{time.strftime('%F %T')} pid {os.getpid()} serving {path}: imported {len(PRELOAD)} modules in "
              f"{time.perf_counter() - t0:.1f} s; other threads: {threads or 'none'}\n")
    if threads:  # a fork copies one thread: locks others hold would never be released in the stage
        log.write("not serving: a preloaded module started threads\n")
        listener.close()
        os.unlink(path)
        return
    children: dict[int, tuple[socket.socket, str]] = {}
    idle_since = time.monotonic()
    listener.settimeout(0.2)
    while children or time.monotonic() - idle_since < IDLE_S:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            conn.settimeout(None)
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError) as exc:
                log.write(f"bad request: {exc}\n")
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                for other, _ in children.values():
                    other.close()
                listener.close()
                log.close()
                lock.close()
                _child(conn, request, fds)  # never returns
            for fd in fds:
                os.close(fd)
            children[pid] = (conn, " ".join(request["argv"]))
            log.write(f"{time.strftime('%F %T')} pid {pid}: {children[pid][1]} in {request['cwd']}\n")
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn, what = children.pop(pid)
            ended = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else
                     {"code": os.WEXITSTATUS(status)})
            log.write(f"{time.strftime('%F %T')} pid {pid}: {what} ended {ended}\n")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(ended).encode() + b"\n")
            conn.close()
            idle_since = time.monotonic()
    listener.close()
    os.unlink(path)
    log.write(f"{time.strftime('%F %T')} idle for {IDLE_S:.0f} s: stopped\n")


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < 4:
        raise ValueError("short header")
    size = struct.unpack("!I", data[:4])[0]
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("the client left mid-request")
        body += chunk
    if len(fds) != 3:
        raise ValueError(f"expected the client's stdin, stdout and stderr, got {len(fds)} descriptors")
    return json.loads(body), fds


def _drop_project_modules() -> None:
    """The project's code is imported by each stage afresh (an edit between two stages counts)."""
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT_PACKAGES or name == "__mp_main__":
            del sys.modules[name]
    importlib.invalidate_caches()
    sys.path_importer_cache.clear()


def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    code = 1
    try:
        os.setsid()  # its own process group: the stage and what it starts end together
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        sys.argv[:] = request["argv"]
        _drop_project_modules()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=unbuffered or os.isatty(1),
                                      write_through=unbuffered)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                      errors="backslashreplace")
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
        threading.Thread(target=_watch, args=(conn,), name="stage-client-watch", daemon=True).start()
        import runpy

        from pipelines import freshness

        freshness.guard()  # a stage DVC starts from a stale dvc.yaml stops here, before any work
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as Python ends on an uncaught Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        import traceback

        traceback.print_exc()
    _flush()
    os._exit(code)


def _watch(conn: socket.socket) -> None:
    """Signals the client forwards reach this process; a client gone ends it (and its group)."""
    buffer = b""
    while True:
        try:
            chunk = conn.recv(64)
        except OSError:
            chunk = b""
        if not chunk:
            os.killpg(0, signal.SIGKILL)
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            os.kill(os.getpid(), int(line))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


if __name__ == "__main__":
    serve(sys.argv[1])
