"""Where each stage reads and writes: the one place that knows the repository's file layout."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from components.config import ConfigError
from components.data.manifest import DataError
from components.params import (
    AlgorithmParams,
    DatasetParams,
    algorithm,
    dataset,
    image_generators,
    load_all,
    load_params,
    stage_keys,
    view,
)


@dataclass(frozen=True)
class Layout:
    """Paths of one repository checkout; ``root`` is where dvc.yaml lives."""
    root: Path

    def raw(self, dataset: str) -> Path:
        return self.root / "data" / "raw" / dataset

    def shards(self, dataset: str) -> Path:
        return self.root / "data" / "shards" / dataset

    def model(self, algo: str, candidate: str) -> Path:
        return self.root / "models" / algo / candidate

    def tuned(self, algo: str) -> Path:
        """The sweep's winner: what ``train.<algo>.tuned`` trains with (only the hyperparameters,
        so an unchanged winner leaves the file, and the train stage, as they were)."""
        return self.model(algo, "tune") / "best.yaml"

    def sweep(self, algo: str) -> Path:
        """What the sweep found (every trial, the winner against params.yaml's own config)."""
        return self.model(algo, "tune") / "sweep.json"

    def metrics(self, stage: str, algo: str) -> Path:
        return self.root / "metrics" / stage / f"{algo}.json"

    def plots(self, stage: str, algo: str) -> Path:
        return self.root / "plots" / stage / algo

    def report(self, algo: str) -> Path:
        return self.root / "reports" / algo / "evaluate.md"

    def compare_report(self, dataset: str) -> Path:
        return self.root / "reports" / "compare" / dataset / "compare.md"

    def storage_root(self, configured: str) -> str:
        """Absolute path or URL for Ray results, checkpoints and workers' shards (outside DVC outputs)."""
        if not configured:
            return str(self.root / ".runs")
        if "://" in configured:
            return configured
        path = Path(configured).expanduser()
        return str(path if path.is_absolute() else (self.root / path).resolve())

    def worker_shards(self, dataset: str, version: str, configured_root: str) -> str:
        """Where train workers read ``dataset``'s shards: the checkout's own folder on one machine
        (no storage root set), else a copy under the storage root that every node can reach."""
        if not configured_root:
            return str(self.shards(dataset))
        from components.data.shards import publish

        return publish(self.shards(dataset), f"{self.storage_root(configured_root)}/shards/{dataset}-{version}")


def stage_args(description: str, with_algo: bool = True, with_dataset: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if with_algo:
        parser.add_argument("--algo", required=True, help="algorithm name, e.g. resnet")
    if with_dataset:
        parser.add_argument("--dataset", required=True, help="dataset name, e.g. digits")
    parser.add_argument("--params", default="params.yaml", help="path of params.yaml")
    return parser.parse_args()


def load(args: argparse.Namespace, stage: str | None = None) -> tuple[AlgorithmParams, Layout]:
    """Read params.yaml and validate what the stage of ``args.algo`` reads; a bad value stops the
    stage before any work. A pipeline ``stage`` (tune, train, evaluate, register) is handed only
    the keys dvc.yaml lists for it; a tool outside the DAG (``score``) gets every section."""
    raw = load_params(args.params)
    algo = args.algo
    entry = (raw.get("algorithms") or {}).get(algo)
    if not isinstance(entry, dict):
        raise ConfigError(f"algorithms.{algo}: no such algorithm in {args.params}; "
                          f"valid: {sorted(raw.get('algorithms') or {})}")
    load_all(raw, algorithms=[algo], datasets=[entry.get("dataset")])
    return algorithm(raw, algo, stage), Layout(Path(args.params).resolve().parent)


def load_compared(args: argparse.Namespace) -> tuple[list[str], Layout]:
    """The image generators on ``args.dataset`` that its compare stage compares (two or more)."""
    raw = load_params(args.params)
    load_all(raw, algorithms=[], datasets=[args.dataset])
    algos = image_generators(view(raw, stage_keys("compare", raw, args.dataset)), args.dataset)
    if len(algos) < 2:
        raise ConfigError(f"data.{args.dataset}: {len(algos)} image generator(s) train on it; the compare stage "
                          f"needs two (run python -m pipelines.dag)")
    return algos, Layout(Path(args.params).resolve().parent)


def load_data(args: argparse.Namespace, everything: bool = False) -> tuple[DatasetParams, Layout]:
    """Read params.yaml and validate ``data.<args.dataset>`` (``everything``: every section)."""
    raw = load_params(args.params)
    load_all(raw) if everything else load_all(raw, algorithms=[], datasets=[args.dataset])
    return dataset(raw, args.dataset), Layout(Path(args.params).resolve().parent)


def run_stage(main) -> None:
    """Run a stage's main as its process's entry point, and end the process: exit 0 when it
    returns, 2 with one clear line (no traceback) on a known user error.

    Ending is immediate (``os._exit`` once the output streams are flushed): a stage's outputs are
    closed files by then, and tearing down an interpreter that imported torch, MLflow and Ray
    costs about a second more, and stopping a local Ray gracefully a few; a local Ray this process
    started is killed instead (``launch.kill_local_ray``: its agents too), and a cluster drops the
    driver's job.
    Anything else raised goes up as usual (a traceback, exit 1).

    With ``M7_PROFILE=<file>`` set, appends one JSON line per stage process to that file: the
    seconds from process start to ``main`` (interpreter start and imports), spent starting or
    joining Ray, and in the rest of ``main`` (the stage's own work). ``benchmarks/profile_repro.py``
    reads it.
    """
    started = time.perf_counter()
    code = 0
    try:
        main()
    except (ConfigError, DataError, FileNotFoundError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    finally:
        if os.environ.get("M7_PROFILE"):
            _profile_line(os.environ["M7_PROFILE"], started)
    _end_process(code)


def _end_process(code: int) -> None:
    import logging

    logging.shutdown()  # flushes every handler
    sys.stdout.flush()
    sys.stderr.flush()
    launch = sys.modules.get("components.training.launch")  # imported only by stages that start Ray
    if launch is not None:
        launch.kill_local_ray()
    os._exit(code)


def _profile_line(path: str, started: float) -> None:
    import json

    launch = sys.modules.get("components.training.launch")  # imported only by stages that start Ray
    ray_s = getattr(launch, "ray_start_s", 0.0)
    now = time.perf_counter()
    if os.environ.get("M7_STAGE_STARTED"):  # forked by the stage server: from its client's start
        total = time.time() - float(os.environ["M7_STAGE_STARTED"])
    else:
        with open(f"/proc/{os.getpid()}/stat") as f:  # field 22: start time in clock ticks after boot
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            total = float(f.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    imports = max(total - (now - started), 0.0)
    entry = {"argv": sys.argv[1:], "module": sys.argv[0], "total_s": round(total, 2),
             "start_imports_s": round(imports, 2), "ray_start_s": round(ray_s, 2),
             "work_s": round(now - started - ray_s, 2)}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def quiet_third_parties() -> None:
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Reported metrics" line per epoch
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
