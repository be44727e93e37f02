"""Run the training loop as a Ray Train job, and the hooks that report to Ray Train / Ray Tune.

``num_workers == 0`` is Ray Train's local mode: the loop runs in this process with no
Ray cluster at all (about 0.1 s of overhead). ``num_workers >= 1`` starts a DDP worker
group on the Ray cluster (``RAY_ADDRESS``, or a local one sized by ``ray_num_cpus``);
on 2 cores that costs about 20 s before the first step, which is why the default is 0:
on one laptop, one process already uses every core through intra-op threads.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.training import checkpoint as ckpt
from components.training.loop import LoopConfig, train_loop_per_worker


class RayTrainReport:
    """Reports the checkpointed epochs to Ray Train: every ``checkpoint_every``-th of ``epochs``
    and the last (``checkpoint.due``, the loop's rule); rank 0 attaches its checkpoint, which
    Ray keeps to restart a failed worker group from.

    Epochs between checkpoints are not reported: a report is a barrier of all ranks through an
    actor (about 10 ms an epoch on 2 CPU workers) and registers nothing Ray could restart from;
    every epoch's metrics are in MLflow (``tracking.MlflowHook``) and the run's ``epochs.jsonl``.
    Every rank calls it (``all_ranks``), with the same epochs, as Ray Train requires.
    """

    all_ranks = True

    def __init__(self, checkpoint_every: int = 1, epochs: int | None = None):
        if checkpoint_every > 1 and epochs is None:
            raise ValueError("RayTrainReport needs epochs when checkpoint_every > 1 (the last epoch is reported)")
        self.checkpoint_every, self.epochs = checkpoint_every, epochs

    def on_step(self, rows: list[dict]) -> None:
        pass

    def on_epoch(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if not ckpt.due(int(metrics["epoch"]), self.checkpoint_every, self.epochs):
            return
        import logging

        import ray.train

        # Ray Train logs every report of every rank at INFO ("Reporting training result ..."),
        # two lines an epoch on the driver's console; the epoch's metrics are in MLflow.
        logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


PROBE_TIMEOUT_S = 10.0
CONTROLLER_FAILURES = 3  # Ray Train retries a worker group that failed to start (or its controller) this often
ray_start_s = 0.0  # seconds this process spent in init_ray (the stage profile reports it)
_local_ray = False  # init_ray started a Ray of this process's own (no RAY_ADDRESS)


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when nothing listens at a Ray address.

    ``ray.init(address=...)`` on an address where nothing listens keeps retrying (more than
    five minutes, measured); a TCP connect to the GCS (``host:port``) or Ray Client
    (``ray://host:port``) port answers at once. ``auto`` and ``local`` are left to Ray.
    """
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    host, port = parts.hostname, parts.port or (10001 if address.startswith("ray://") else 6379)
    if not host:
        raise ConnectionError(f"RAY_ADDRESS={address!r} is not an address; use host:port (the head's GCS "
                              f"port, 6379 by default), ray://host:10001, or unset it to run locally")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({host}:{port}: "
                              f"{exc.strerror or exc}); start it (`ray start --head`), fix the variable, "
                              f"or unset it to run on a local Ray") from None


def init_ray(num_cpus: int = 0, dashboard: bool = True) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a new local Ray with ``num_cpus`` (0 = all).

    ``dashboard=False`` starts a local Ray without its dashboard, a few seconds less on 2 cores.
    Only a stage that launches no ``TorchTrainer`` may ask for that: Ray Train's placement-group
    cleaner asks the dashboard's state API whether a run's controller is alive, and without it a
    Train run stopped by Tune never gives back its CPUs (see the STACK notes).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    global ray_start_s
    t0 = time.perf_counter()
    # Ray Train V2's controller polls its workers every this many seconds (default 2.0), and a
    # worker's per-epoch report waits for the next poll: at the default every epoch of a DDP
    # run costs up to 2 s more. Processes of a local Ray inherit this; on a cluster, set it
    # where the nodes start (`ray start`).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # "local": a new Ray of our own, never one found on this machine (`ray start`, another
            # process's cluster): only RAY_ADDRESS points a stage at a cluster.
            # A local Ray runs on no machine that is drained or preempted: Ray Train's preemption
            # watcher (an actor polling the GCS for draining nodes) only takes CPU from the workers.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), log_to_driver=True,
                     configure_logging=False, include_dashboard=dashboard)
            global _local_ray
            _local_ray = True
    except ConnectionError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at RAY_ADDRESS={address!r} ({exc}); "
                              f"start it (`ray start --head`) or unset RAY_ADDRESS to run locally") from None
    finally:
        ray_start_s += time.perf_counter() - t0


def kill_local_ray() -> None:
    """Kill at once (SIGKILL) every process of the local Ray that ``init_ray`` started in this
    process, the agents and workers its raylet started included; nothing when it started none or
    joined a cluster. For a process about to end, after its outputs are written.

    A process that ends without stopping Ray takes its GCS, raylet and dashboard with it (Ray's
    fate sharing), but not the raylet's dashboard agent and runtime-env agent: they notice the
    raylet's end, then try to tell the dead GCS about it for a minute or more, holding their
    ports and some CPU. The next stage's Ray found agent port 52365 taken, and its raylet waited
    for its own agent: its start took 7-9 s instead of 3-4 on 2 cores. ``ray.shutdown()`` stops
    them too, gracefully, in a few seconds more than this.
    """
    if not _local_ray:
        return
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    procs: list[psutil.Process] = []
    for infos in (node.all_processes.values() if node is not None else ()):
        for info in infos:
            try:
                proc = psutil.Process(info.process.pid)
                procs += [*proc.children(recursive=True), proc]
            except psutil.Error:  # already gone
                continue
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def autoscaling_limit() -> dict[str, int] | None:
    """The most of each resource the cluster's autoscaler may grow to, or None for a cluster of
    fixed size (a local Ray, nodes joined with `ray start`): what Ray Data asks the GCS too."""
    try:
        from ray._private import state

        return state.state.get_max_resources_from_cluster_config()
    except Exception:  # a private API of Ray: a version without it is treated as fixed-size
        return None


def check_resources(workers: int, use_gpu: bool, param: str) -> None:
    """Fail at once, in one line, when the cluster can never run ``workers`` workers of one CPU
    (or one GPU) each; on an autoscaling cluster that may grow to them, say how long it is waited for.

    Without this, Ray Train waits for the resources ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``
    (60 s) per try, over four tries, printing each failure (measured: 267 s, 9 tracebacks).
    """
    import ray

    from components.config import ConfigError

    kind = "GPU" if use_gpu else "CPU"
    have = ray.cluster_resources()
    if have.get(kind, 0) >= workers:
        return
    address = os.environ.get("RAY_ADDRESS")
    where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "the local Ray of this machine"
    found = f"{where} has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs"
    limit = autoscaling_limit() if address else None
    if limit is None or limit.get(kind, 0) < workers:
        grows = f" and autoscales to at most {limit.get(kind, 0):g} {kind}s" if limit is not None else ""
        raise ConfigError(f"{param}: {workers} workers need {workers} {kind}s, and {found}{grows}; "
                          f"lower {param} or run on a larger cluster (RAY_ADDRESS)")
    timeout = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60.0))
    print(f"{param}: {workers} workers need {workers} {kind}s; {found} now and autoscales to "
          f"{limit[kind]:g}: waiting up to {timeout * (CONTROLLER_FAILURES + 1):.0f} s for them "
          f"({CONTROLLER_FAILURES + 1} tries of RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S={timeout:g})", flush=True)


def root_cause(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (TrainingFailedError, RayTaskError, ...)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if isinstance(inner, BaseException):
            exc = inner
            continue
        errors = getattr(exc, "worker_failures", None)
        if isinstance(errors, dict) and errors:
            exc = next(iter(errors.values()))
            continue
        break
    return exc


def fit(config: LoopConfig | Mapping[str, Any], *, num_workers: int, use_gpu: bool, storage_path: str, name: str,
        max_failures: int = 0, ray_num_cpus: int = 0, callbacks: list | None = None,
        workers_param: str = "") -> dict[str, float]:
    """One Ray Train run of the shared loop; returns the metrics of its last reported epoch.

    ``max_failures``: how many times a worker group that lost a worker (a killed process, a
    lost node) is restarted; each restart resumes from the last reported epoch checkpoint,
    so at most one epoch of work is repeated. ``workers_param``: the params key that set
    ``num_workers`` (named when the cluster cannot run them; default ``train.<algo>.num_workers``).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    loop = dataclasses.replace(LoopConfig.of(config), distributed=True)
    if num_workers > 0:
        init_ray(ray_num_cpus)
        check_resources(num_workers, use_gpu, workers_param or f"train.{loop.algo}.num_workers")
    if "://" not in storage_path:
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.as_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=CONTROLLER_FAILURES),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps the worker's error; surface the user's one
        cause = root_cause(exc)
        if cause is exc:
            raise
        raise cause from None
    if result.error is not None:
        raise root_cause(result.error)
    return dict(result.metrics or {})
