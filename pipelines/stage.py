"""Run a pipeline stage from a warm interpreter: ``python -m pipelines.stage train --algo resnet``
does what ``python -m pipelines.train --algo resnet`` does, about 3 s sooner.

Every stage is a fresh process (DVC runs each command on its own), and each used to spend most
of its first seconds importing torch, MLflow, Ray and torch-geometric: about 3 s of a
``register`` whose own work is 3 s, 100 s of a cold ``dvc repro``. Here a small client (this
module, standard library only) asks a stage server, a process that has imported those once, to
fork; the fork takes the client's arguments, working directory, environment, ``sys.path`` and
standard streams (passed as file descriptors), imports the project's code afresh and runs the
stage's module as ``__main__``. The client waits, forwards the signals it gets (Ctrl-C reaches
the stage), and ends as the stage ended: the same exit code, or killed by the same signal. If the
client dies, so does the stage (it watches the connection).

The first stage starts the server (a few seconds, paid once); it serves any number of stages, one
at a time or together, and exits after ``M7_STAGE_SERVER_IDLE`` seconds (default 60) with none.
A server is specific to the interpreter, its ``sys.path`` and the variables that change what an
import does (``PYTHONPATH``, thread counts...): another set of them gets another server. The
project's own modules are never kept in the server, so an edit is seen by the next stage.

``M7_STAGE_SERVER=0`` runs the stage in this process instead (as does any platform without
``fork``); so does a server that cannot be reached, after one line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

# Imported by the server before it forks: what stages spend their start-up on.
# Beyond the packages themselves, what the packages import only when first used, measured with
# `python -X importtime` over each stage kind: MLflow's SQL stores (sqlalchemy, alembic: the
# embedded store, opened by every stage that logs or registers), pyplot (every stage that draws),
# GitPython (a run's source tags), and what a Tune run starts (its TensorBoard logger, the
# dashboard's aiohttp, boto3 for its storage): about 1.9 s per stage on 2 cores (A/B, seven light stages).
PRELOAD = ("numpy", "yaml", "torch", "torch.nn.functional", "safetensors.torch", "webdataset", "mlflow",
           "mlflow.tracking", "mlflow.pyfunc", "mlflow.store.tracking.sqlalchemy_store",
           "mlflow.store.model_registry.sqlalchemy_store", "git", "ray", "ray.train", "ray.train.torch", "ray.tune",
           "ray.dashboard.optional_deps", "tensorboardX", "boto3", "torch_geometric", "matplotlib",
           "matplotlib.pyplot")
# Environment variables a preloaded module may read as it is imported (the prefixes of the
# libraries' own settings): a server serves one set of their values, another set gets its own.
IMPORT_ENV_PREFIXES = ("PYTHON", "RAY_", "MLFLOW_", "TORCH", "PYTORCH_", "CUDA_", "NCCL_", "GLOO_", "OMP_", "KMP_",
                       "MKL_", "OPENBLAS_", "MPL", "LD_", "VIRTUAL_ENV", "TQDM_", "GIT_")
PROJECT_PACKAGES = ("pipelines", "components")
START_TIMEOUT_S = 60.0


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m pipelines.stage STAGE [ARGS...]  (STAGE: ingest, preprocess, tune, "
                         "train, evaluate, register, or a module name)")
    module = argv[0] if "." in argv[0] else f"pipelines.{argv[0]}"
    if os.environ.get("M7_STAGE_SERVER", "1") == "0" or not hasattr(os, "fork") or not sys.platform.startswith("linux"):
        _run_here(module, argv[1:])
    try:
        conn = _connect()
    except OSError as exc:
        print(f"stage server: {exc}; running {module} in this process", file=sys.stderr, flush=True)
        _run_here(module, argv[1:])
    _hand_off(conn, module, argv[1:])


def _run_here(module: str, args: list[str]) -> None:
    import runpy

    from pipelines import freshness

    freshness.guard()  # a stage DVC starts from a stale dvc.yaml stops here, before any work
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    raise SystemExit(0)


# ----------------------------------------------------------------------------------- the client

def _key() -> str:
    parts = [sys.executable, sys.version, str(os.getuid()), *sys.path[1:],
             *sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(IMPORT_ENV_PREFIXES))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def socket_path() -> str:
    folder = os.environ.get("M7_STAGE_SOCKET_DIR") or tempfile.gettempdir()
    return os.path.join(folder, f"m7-stage-{_key()}.sock")


def _connect() -> socket.socket:
    path = socket_path()
    try:
        return _dial(path)
    except OSError:
        pass
    # No server: start one, detached (its own session, no terminal), and wait for its socket.
    subprocess.Popen([sys.executable, "-m", "pipelines.stage_server", path], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return _dial(path)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise OSError(f"no server answered at {path} within {START_TIMEOUT_S:.0f} s ({exc})") from None
            time.sleep(0.05)


def _dial(path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        raise
    return conn


def started_at() -> float:
    """This process's start, in seconds since the epoch (the stage profile counts from it)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except OSError:
        return time.time()


def _send(conn: socket.socket, message: dict, fds: list[int]) -> None:
    data = json.dumps(message).encode()
    socket.send_fds(conn, [struct.pack("!I", len(data)) + data], fds)


def _hand_off(conn: socket.socket, module: str, args: list[str]) -> None:
    env = {**os.environ, "M7_STAGE_STARTED": repr(started_at())}  # for the stage profile (layout.py)
    request = {"module": module, "argv": [module, *args], "cwd": os.getcwd(), "env": env, "path": sys.path,
               "umask": _umask()}
    _send(conn, request, [0, 1, 2])
    # Signals for the stage go to the stage; the client ends only as the stage did.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda number, frame: _forward(conn, number))
    status = None
    buffer = b""
    while True:
        try:
            chunk = conn.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            status = json.loads(line)
    if status is None:
        print("stage server: the connection closed before the stage ended (the server was killed?)",
              file=sys.stderr, flush=True)
        os._exit(1)
    if status.get("signal"):  # end as the stage ended: killed by the same signal
        if status["signal"] not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
    os._exit(status.get("code", 1))


def _forward(conn: socket.socket, number: int) -> None:
    try:
        conn.sendall(f"{number}\n".encode())
    except OSError:
        os._exit(128 + number)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    main(sys.argv[1:])
