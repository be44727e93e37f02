"""MLflow: the store, runs, the loop's hook (train runs and tune trials), the registry and its aliases.

The default store is embedded in the repository: ``sqlite:///<repo>/mlflow.db`` with
artifacts under ``<repo>/mlartifacts`` (both git-ignored), which is what a plain
``mlflow ui`` started in the repository root opens. ``MLFLOW_TRACKING_URI`` overrides it.
One experiment per algorithm, named after it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

CHAMPION, CHALLENGER = "champion", "challenger"
_MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


PROBE_TIMEOUT_S = 10.0


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when nothing answers at ``uri`` (MLflow's own client retries
    a refused connection with backoff for about four minutes before it gives up)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (an auth or proxy status): reachable; MLflow's calls report the rest
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach the MLflow tracking server at MLFLOW_TRACKING_URI={uri} ({reason}); "
                              f"start it, fix the variable, or unset it to use the local store") from None


# What MLflow's tracking store accepts (a database URL's scheme may name a driver: postgresql+psycopg2).
SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_uri(uri: str) -> None:
    """A URI MLflow cannot store runs at fails here, in one line, before any work."""
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme.split("+")[0].lower() if "://" in uri else ""  # none: a path
    if scheme and scheme not in SCHEMES:
        raise ConnectionError(f"MLFLOW_TRACKING_URI={uri}: MLflow cannot track to a '{scheme}' URI; use one of "
                              f"{', '.join(s + '://' for s in SCHEMES)} or a local path, or unset the variable to use "
                              f"the repository's own store (mlflow.db)")


def configure(root: Path) -> str:
    """Point MLflow at the project's store; check a remote server answers before any work."""
    uri = tracking_uri(root)
    check_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("http"):
        probe_server(uri)
    return uri


def experiment_id(name: str, root: Path) -> str:
    """The experiment called ``name``; created with artifacts in ``<root>/mlartifacts`` on the local store."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (Path(root).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def params_of(config: dict[str, Any]) -> dict[str, str]:
    from components.config import flatten

    return {k: str(v)[:500] for k, v in flatten(config).items()}


def log_batch(client: MlflowClient, run_id: str, *, metrics: list[Metric] = (),
              params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
              synchronous: bool = True) -> list:
    """Log in as few calls as MLflow's per-call limits allow (1000 metrics, 100 params).

    ``synchronous=False`` queues the metrics to MLflow's logging thread and returns the
    pending operations (``.wait()`` on each); params and tags are always logged at once.
    """
    metrics = list(metrics)
    params_l = [Param(k, v) for k, v in (params or {}).items()]
    for i in range(0, len(params_l), 100):
        client.log_batch(run_id, params=params_l[i:i + 100])
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    pending = []
    for i in range(0, len(metrics), _MAX_BATCH):
        op = client.log_batch(run_id, metrics=metrics[i:i + _MAX_BATCH], synchronous=synchronous)
        if op is not None:
            pending.append(op)
    return pending


def step_metrics(rows: list[dict], prefix: str = "") -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(f"{prefix}{k}", float(v), now, int(r["step"]))
            for r in rows for k, v in r.items() if k not in ("step", "epoch")]


class MlflowHook:
    """Training-loop hook: step rows and epoch metrics into one MLflow run (rank 0 only).

    Picklable, so it travels to Ray Train workers; the client is made lazily in the worker.
    """

    all_ranks = False
    MAX_IN_FLIGHT = 64

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "run_id": self.run_id, "_client": None}

    # Rows go to MLflow's logging thread: a write to the tracking store (tens of ms to a
    # SQLite file, more to a server) no longer stalls every epoch. on_end waits for them.
    def on_step(self, rows: list[dict]) -> None:
        if rows:
            self._queue(log_batch(self.client, self.run_id, metrics=step_metrics(rows, "step/"), synchronous=False))

    def on_epoch(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self._queue(log_batch(self.client, self.run_id, metrics=self._epoch_metrics([metrics]), synchronous=False))

    def on_end(self) -> None:
        """Wait until every queued row is in the tracking store (the loop calls it last, also on failure)."""
        pending, self._pending = getattr(self, "_pending", []), []
        for op in pending:
            op.wait()

    def _queue(self, ops: list) -> None:
        # At most MAX_IN_FLIGHT batches wait in MLflow's queue: past that, wait for the oldest
        # (a slow tracking server slows the run down instead of filling memory).
        self._pending = getattr(self, "_pending", []) + ops
        while len(self._pending) > self.MAX_IN_FLIGHT:
            self._pending.pop(0).wait()

    @staticmethod
    def _epoch_metrics(rows: list[dict]) -> list[Metric]:
        now = int(time.time() * 1000)
        return [Metric(k, float(v), now, int(r["epoch"])) for r in rows for k, v in r.items() if k != "epoch"]

    def _last_logged(self, key: str) -> int:
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def on_resume(self, steps: list[dict], epochs: list[dict]) -> None:
        """Log what the run directory holds up to the checkpoint and this run does not.

        A worker can die after its epoch checkpoint is written and before this hook logged that
        epoch; the restarted group resumes after that checkpoint, so those rows would be missing.
        Rows MLflow already has are not logged again: each step and epoch appears exactly once.
        """
        self.on_end()  # what this process queued is in the store before it is compared
        if steps:
            key = next(k for k in steps[-1] if k not in ("step", "epoch"))
            last = self._last_logged(f"step/{key}")
            log_batch(self.client, self.run_id, metrics=step_metrics([r for r in steps if r["step"] > last], "step/"))
        if epochs:
            last = self._last_logged("train_loss")
            log_batch(self.client, self.run_id, metrics=self._epoch_metrics([e for e in epochs if e["epoch"] > last]))


# ------------------------------------------------------------------------------ registry

def champion_version(name: str):
    """The model version holding the ``champion`` alias, or None."""
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def metric_tags(metrics: dict[str, float], prefix: str = "test_") -> dict[str, str]:
    """Metrics as model-version tags, written exactly (``repr``): ``register`` compares a new
    version against the champion's tag, and a rounded tag would let an equal model win."""
    return {f"{prefix}{k}": repr(float(v)) for k, v in metrics.items()}


REGISTER_KEY = "register_key"


def registered_version(name: str, key: str):
    """The version of ``name`` tagged ``register_key = key`` (left by an earlier register of the
    same trained model, finished or not), with its aliases, or None."""
    client = MlflowClient()
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.{REGISTER_KEY} = '{key}'")
    except mlflow.exceptions.MlflowException:
        return None  # no such registered model yet
    if not found:
        return None
    # A search result carries no aliases; the version read by its number does.
    return client.get_model_version(name, max(found, key=lambda v: int(v.version)).version)


def log_model(experiment: str, algo: str, key: str, run_name: str, *, metrics: dict[str, float],
              card: list[Path], **pyfunc: Any) -> str:
    """Log a pyfunc model (``pyfunc``: ``mlflow.pyfunc.log_model``'s arguments) in a new run of
    ``experiment`` tagged ``register_key = key``, with its test ``metrics`` and the ``card`` files
    (images, the report) as artifacts; returns its model URI. Runs of an interrupted log with the
    same key are marked KILLED first."""
    client = MlflowClient()
    for run in client.search_runs([experiment], f"tags.{REGISTER_KEY} = '{key}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")
        print(f"register {algo}: run {run.info.run_id} of an interrupted register marked KILLED")
    with mlflow.start_run(experiment_id=experiment, run_name=run_name,
                          tags={"stage": "register", "algo": algo, REGISTER_KEY: key}):
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items()})
        for file in card:
            mlflow.log_artifact(str(file), artifact_path="card")
        info = mlflow.pyfunc.log_model(name="model", **pyfunc)
        failpoint("register:logged")
    return info.model_uri


def register(model_uri: str, name: str, *, tags: dict[str, str], description: str,
             metric: str, value: float, mode: str, min_improvement: float = 0.0,
             version=None) -> tuple[Any, str, Any]:
    """Register ``model_uri`` as a new version of ``name`` and give it an alias.

    ``champion`` moves to the new version only when it beats the current champion on
    ``metric`` (by more than ``min_improvement``, in direction ``mode``); otherwise the new
    version becomes ``challenger``. ``version``: an existing version of this model to finish
    instead (an interrupted register left it: its description and alias are set again, and a
    version that holds ``champion`` keeps it). Returns (version, alias, previous champion or None).
    """
    client = MlflowClient()
    if version is None:
        if client.search_registered_models(filter_string=f"name = '{name}'") == []:
            client.create_registered_model(name, description=(
                f"Champion = the best {name} on the test split by {metric} ({mode}); "
                f"challenger = the latest version that did not beat it."))
        version = mlflow.register_model(model_uri, name, tags=tags)
        failpoint("register:versioned")
    client.update_model_version(name, version.version, description=description)
    failpoint("register:described")
    previous = champion_version(name)
    if previous is not None and previous.version == version.version:
        return version, CHAMPION, None  # it won before the interruption
    if previous is None:
        better = True
    else:
        old = float(previous.tags.get(f"test_{metric}", "nan"))
        better = (value > old + min_improvement) if mode == "max" else (value < old - min_improvement)
        better = better or old != old  # a champion without the metric loses
    alias = CHAMPION if better else CHALLENGER
    client.set_registered_model_alias(name, alias, version.version)
    return version, alias, previous


def failpoint(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, as a lost machine would) when ``M7_FAILPOINT`` names
    ``name``: the fault tests stop a stage between two of its steps with it."""
    if os.environ.get("M7_FAILPOINT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
