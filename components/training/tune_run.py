"""A sweep on Ray Tune: one Tune run for all its rungs, each trial the shared loop in a trial process.

Successive halving (``components/training/sweep.py``) decides between rungs; a Tune search
algorithm hands each rung's trials to Tune, whose trial processes live across rungs.

Only the tune stage runs this (``pipelines/tune.py``); the train stage launches through
``components/training/launch.py`` and reads the sweep's winner through
``components/training/winner.py``, so an edit here re-runs the tune stages and what follows
them through ``best.yaml``, not every train stage directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from components.config import TrainConfig
from components.training import storage
from components.training import sweep as sha

# The loop and the launcher (torch, the families) are imported inside the functions that use
# them: a trial process unpickles this module when Ray Tune starts it, and Tune may start one it
# then throws away (a trial that gets a process freed by another instead), waiting for it to
# finish starting before it stops it, at the end of a sweep too. Such a process costs a second of
# Python and Ray, not the seconds of importing torch.


class TuneReport:
    """Reports each epoch to a plain Ray Tune function trial."""

    all_ranks = False

    def on_step(self, rows: list[dict]) -> None:
        pass

    def on_epoch(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        from ray import tune

        tune.report(metrics)


def _sweep_trial(config: dict[str, Any], *, algo: str, family: str, base: TrainConfig, data_dir: str,
                 runs_root: str, workers_per_trial: int, storage_path: str, train_fraction: float) -> None:
    """One trial of one rung (runs in a Ray Tune trial actor): train ``config["trial"]`` up to epoch
    ``config["epochs"]``, resuming from its run directory, reporting each epoch to Tune. The driver
    logs the trial to MLflow (:class:`_TrialLog`): a trial process never imports MLflow."""
    from components.training.loop import LoopConfig, train_loop_per_worker

    t = config["trial"]
    trial = sha.Trial(t["name"], t["schedule"], t["lr"], t["warmup"])
    loop = LoopConfig(algo, trial.apply(base), data_dir, f"{runs_root}/{trial.name}", family=family,
                      max_epochs=config["epochs"], train_fraction=train_fraction, final_val_only=True)
    if workers_per_trial == 0:
        train_loop_per_worker(dataclasses.replace(loop, hooks=(TuneReport(),), single_thread=True))
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        from components.training import launch

        launch.fit(dataclasses.replace(loop, hooks=(launch.RayTrainReport(),)), num_workers=workers_per_trial,
                   use_gpu=base.use_gpu, storage_path=storage_path, name=f"{algo}-{trial.name}-to-{config['epochs']}",
                   callbacks=[TuneReportCallback()], workers_param=f"tune.{algo}.workers_per_trial")


class _TableTail:
    """The rows a step or epoch table (JSON lines) gained since the last read.

    On a local disk the file is read from where the last read stopped, so a report costs the
    rows it adds, not the table so far; a table rewritten since (a resumed run drops the rows
    past its checkpoint: a new file) is read again from its start. Under a URL (an object store
    has no append: each append rewrites it) the whole table is read."""

    def __init__(self, url: str) -> None:
        self.url, self.path = url, storage.local_path(url)
        self.inode, self.offset = -1, 0

    def rows(self) -> list[dict]:
        if self.path is None:
            return [json.loads(x) for x in (storage.read_text(self.url) or "").splitlines() if x.strip()]
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self.inode or stat.st_size < self.offset:
                    self.inode, self.offset = stat.st_ino, 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        whole = data[:data.rfind(b"\n") + 1]  # a row being written waits for the next read
        self.offset += len(whole)
        return [json.loads(x) for x in whole.splitlines() if x.strip()]


class _TrialLog:
    """The driver's MLflow logging of a sweep's trials: at each epoch a trial reports, the rows its
    run directory gained since (``steps.jsonl``, ``epochs.jsonl``: written before the report) go to
    the trial's run through a :class:`components.tracking.MlflowHook` of its own, as the loop's
    hook would log them, in MLflow's logging thread.

    A trial process logging for itself imported MLflow (about 2 s of a 2-core machine per trial
    process, the sweep's driver has it already) and wrote to the tracking store beside the
    driver. Each step and epoch reaches the run once: a trial that resumes (its next rung, or
    the stage run again) appends after its checkpoint, and rows are logged past the last one
    logged to this run (a run of the stage starts new runs: they get the rows from the start).
    A report reads only the rows its tables gained (:class:`_TableTail`).
    """

    def __init__(self, uri: str, runs_root: str, run_ids: dict[str, str]) -> None:
        from components.tracking import MlflowHook
        from components.training.loop import EPOCHS, HISTORY

        self.hooks = {name: MlflowHook(uri, run_id) for name, run_id in run_ids.items() if run_id} if uri else {}
        self.tails = {name: (_TableTail(f"{runs_root}/{name}/{HISTORY}"), _TableTail(f"{runs_root}/{name}/{EPOCHS}"))
                      for name in self.hooks}
        self.logged: dict[str, tuple[int, int]] = {}  # trial -> (last step, last epoch) logged

    def log(self, name: str) -> None:
        hook = self.hooks.get(name)
        if hook is None:
            return
        step_rows, epoch_rows = self.tails[name]
        last_step, last_epoch = self.logged.get(name, (-1, -1))
        steps = [r for r in step_rows.rows() if r["step"] > last_step]
        epochs = [e for e in epoch_rows.rows() if e["epoch"] > last_epoch]
        self.logged[name] = (steps[-1]["step"] if steps else last_step, epochs[-1]["epoch"] if epochs else last_epoch)
        hook.on_step(steps)
        for epoch in epochs:
            hook.on_epoch(epoch, None)

    def flush(self) -> None:
        """Wait until every row handed to MLflow is in the tracking store."""
        for hook in self.hooks.values():
            hook.on_end()


_LAUNCHER_CPU = 0.01  # a DDP trial's own process: it waits on its Ray Train job
_PENDING = "TUNE_MAX_PENDING_TRIALS_PG"  # how many trials Ray Tune stages ahead of a free process
_CHANNELS: dict[str, _Rungs] = {}  # by key: what a Tune search algorithm (pickled by Tune) talks to


class _Rungs:
    """The driver's side of a sweep's Tune run: the rung being trained, and what became of its trials.

    Successive halving runs in a thread of its own (its ``run_rung`` blocks until a rung is done);
    Ray Tune's loop runs in the stage's main thread and takes the rung's trials from here through
    :class:`_RungSearch`, and reports each trial's end through :class:`_RungProgress`.

    A trial's part of a rung ends at its report of the rung's last epoch (or, without one, when
    its Tune trial ends): its metrics are in its run directory by then. The rung's decision is
    made, and the next rung's trials handed to Tune, while the last trials' processes are still
    returning, so Tune keeps those processes for the next rung instead of ending all but one
    of them and starting new ones (a fresh process imports torch and the project again: seconds
    per rung on a small machine, against a small model's rung of a second or two).
    """

    DECISION_WAIT_S = 30.0  # how long Tune's loop waits for a rung's decision (normally milliseconds)

    def __init__(self, concurrent: int, log: _TrialLog) -> None:
        self.concurrent, self.log = concurrent, log
        self.lock, self.done, self.decided = threading.Lock(), threading.Event(), threading.Event()
        self.pending: list[dict[str, Any]] = []
        self.epochs = self.size = self.handed = 0
        self.ended: set[str] = set()
        self.errors: dict[str, BaseException] = {}
        self.finished = self.aborted = False
        self.t0 = time.perf_counter()

    def start(self, configs: list[dict[str, Any]], epochs: int) -> None:
        with self.lock:
            self.pending, self.epochs, self.size, self.handed = list(configs), epochs, len(configs), 0
            self.ended, self.errors, self.t0 = set(), {}, time.perf_counter()
            self.done.clear()
        self.decided.set()

    def next_config(self) -> dict[str, Any] | None:
        """The rung's next trial, while fewer than ``concurrent`` of its trials are training."""
        with self.lock:
            if not self.pending or self.handed - len(self.ended) >= self.concurrent:
                return None
            self.handed += 1
            return self.pending.pop(0)

    def ended_trial(self, name: str, epochs: int, error: BaseException | None) -> int:
        """Count trial ``name``'s part of the rung at ``epochs`` as ended (with its error); returns
        how many have, or 0 when it had ended already or belongs to a rung decided before."""
        with self.lock:
            if epochs != self.epochs or name in self.ended or self.done.is_set():
                return 0
            if error is not None:
                self.errors[name] = error
            self.ended.add(name)
            if len(self.ended) >= self.size:
                self.decided.clear()
                self.done.set()
            return len(self.ended)

    def wait(self) -> None:
        self.done.wait()
        if self.aborted:
            raise RuntimeError("the Ray Tune run ended before the rung did")

    def wait_decision(self) -> None:
        """Block Tune's loop until the rung just ended is decided: the next rung's trials are
        waiting (or the sweep is over) before Tune sees the last trials' processes come free."""
        self.decided.wait(self.DECISION_WAIT_S)

    def finish(self, aborted: bool = False) -> None:
        with self.lock:
            self.finished, self.aborted = True, self.aborted or aborted
        self.done.set()
        self.decided.set()


class _RungSearch(Searcher):
    """A Ray Tune search algorithm that hands out the current rung's trials, as many at a time as
    may train at once, then nothing until the rung's decision names the next (or the sweep is
    over). Tune pickles it: it holds the sweep's key, and finds the sweep's state in this module
    (a class at module level pickles by name)."""

    def __init__(self, key: str) -> None:
        super().__init__()  # no metric: the decisions are successive halving's, on whole rungs
        self.key = key

    def suggest(self, trial_id: str) -> dict | str | None:
        rungs = _CHANNELS.get(self.key)
        if rungs is None or rungs.finished:
            return Searcher.FINISHED
        return rungs.next_config()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # counted by _RungProgress, which sees the trial's config and error


def sweep(trials: list[sha.Trial], *, grace_period: int, reduction_factor: int, epochs: int, metric: str, mode: str,
          algo: str, family: str, base: TrainConfig, data_dir: str, runs_root: str, storage_path: str, name: str,
          max_concurrent: int = 0, workers_per_trial: int = 0, uri: str = "", train_fraction: float = 1.0,
          run_ids: dict[str, str] | None = None,
          on_rung: Callable[[int, list[sha.Outcome], list[sha.Outcome]], None] | None = None) -> sha.Sweep:
    """The whole sweep (``sweep.successive_halving`` over ``trials``) as one Ray Tune run.

    Each rung trains its trials to the rung's epoch, resuming each from ``runs_root/<name>``'s
    last checkpoint, so a rung costs only the epochs since the previous one; a rung's metrics are
    read from the trial's run directory. One Tune run for every rung keeps its trial processes
    (``reuse_actors``): a rung starts no new processes, where a Tune run per rung started
    ``max_concurrent`` of them, each importing torch and the project again (most of a small
    model's sweep). ``max_concurrent`` (0: one per CPU, or per ``workers_per_trial`` CPUs) changes
    how fast, never what a trial computes or which one wins: the decisions see whole rungs.
    ``run_ids``: each trial's MLflow run, by trial name. Raises RuntimeError when every trial of a
    rung failed.
    """
    import ray
    from ray import tune

    from components.training import launch
    from components.training.loop import EPOCHS, read_rows

    launch.init_ray()
    launch.check_resources(max(1, workers_per_trial), bool(workers_per_trial and base.use_gpu),
                           f"tune.{algo}.workers_per_trial")
    # Tune's console output prints a configuration table and result paths for every Tuner, even
    # at verbose=0: a sweep prints its own line per trial and decision instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A trial that launches a Ray Train job (a DDP job per trial) holds almost nothing itself; its
    # workers take the CPUs. Ray counts its share all the same, so on 2 CPUs two 1-worker trials
    # (2.02 CPUs) cannot train at once: the second job's workers would wait for the first's to
    # end, and Ray Train gives up on a worker group that waits a minute.
    resources = {"CPU": 1} if workers_per_trial == 0 else {"CPU": _LAUNCHER_CPU}
    per_trial = 1 if workers_per_trial == 0 else workers_per_trial + _LAUNCHER_CPU
    concurrent = max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))
    run_ids = run_ids or {}
    key = f"{name}-{uuid.uuid4().hex[:8]}"
    trial_log = _TrialLog(uri, runs_root, run_ids)
    rungs = _CHANNELS[key] = _Rungs(concurrent, trial_log)

    def run_rung(live: list[sha.Trial], r: int) -> dict[str, dict[str, float] | BaseException]:
        rungs.start([{"trial": {**vars(t), "run_id": run_ids.get(t.name, "")}, "epochs": r} for t in live], r)
        rungs.wait()
        out: dict[str, dict[str, float] | BaseException] = {}
        for t in live:
            if t.name in rungs.errors:
                out[t.name] = rungs.errors[t.name]
                continue
            rows = [e for e in read_rows(f"{runs_root}/{t.name}/{EPOCHS}") if e["epoch"] == r - 1]
            out[t.name] = rows[-1] if rows else RuntimeError(f"trial {t.name} has no metrics for epoch {r - 1}")
        return out

    box: dict[str, Any] = {}

    def decide() -> None:
        try:
            box["sweep"] = sha.successive_halving(trials, run_rung, grace_period=grace_period,
                                                  reduction_factor=reduction_factor, epochs=epochs, metric=metric,
                                                  mode=mode, on_rung=on_rung)
        except BaseException as exc:  # handed to the stage's thread below
            box["error"] = exc
        finally:
            rungs.finish()

    trainable = tune.with_parameters(
        _sweep_trial, algo=algo, family=family, base=base, data_dir=data_dir, runs_root=runs_root,
        workers_per_trial=workers_per_trial, storage_path=storage_path, train_fraction=train_fraction)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(search_alg=_RungSearch(key), num_samples=-1, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,  # our lines, not Tune's tables
                                  callbacks=[_RungProgress(algo, key, metric)],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    thread = threading.Thread(target=decide, name=f"{algo}-sweep", daemon=True)
    thread.start()
    # The search algorithm limits how many trials train at once (Tune's ConcurrencyLimiter would
    # count a trial until its process returns, holding the next rung back); Tune may stage as many
    # as may run, each waiting for a process to come free. Tune reads this when the run starts.
    user_pending = os.environ.get(_PENDING)
    os.environ[_PENDING] = user_pending or str(concurrent)
    try:
        tuner.fit()
    finally:
        if user_pending is None:
            os.environ.pop(_PENDING, None)
        rungs.finish(aborted=True)  # a rung still waiting (Tune stopped early) fails instead of hanging
        thread.join()
        _CHANNELS.pop(key, None)
        trial_log.flush()
    if "error" in box:
        raise box["error"]
    return box["sweep"]


class _RungProgress(Callback):
    """A Ray Tune callback (driver side): ends each trial's part of its rung at its report of the
    rung's last epoch (else when the trial ends), and prints a line for it with an ETA; the
    rung's last waits for the decision. Pickled by Tune, as :class:`_RungSearch`."""

    def __init__(self, algo: str, key: str, metric: str) -> None:
        self.algo, self.key, self.metric = algo, key, metric

    def _end(self, trial, result: dict | None, error: BaseException | None) -> None:
        rungs = _CHANNELS[self.key]
        t, epochs = trial.config["trial"], trial.config["epochs"]
        done = rungs.ended_trial(t["name"], epochs, error)
        if not done:
            if error is not None:  # after its rung's last epoch was recorded and heard: the rung has its metrics
                print(f"tune {self.algo}: {t['name']} failed after its epoch {epochs}: {error}", flush=True)
            return
        r = result or {}
        value = f"{self.metric} {r[self.metric]:.4f}" if self.metric in r else ("failed" if error else "no new epoch")
        elapsed = time.perf_counter() - rungs.t0
        eta = elapsed / done * (rungs.size - done)
        print(f"tune {self.algo}: {t['name']} ({t['schedule']}, lr {t['lr']:.3g}, warm-up {t['warmup']}) at "
              f"{epochs} epochs: {value}; {done}/{rungs.size} of the rung, elapsed {elapsed:.0f}s, "
              f"eta {eta:.0f}s", flush=True)
        if done == rungs.size:
            rungs.wait_decision()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _CHANNELS[self.key].log.log(trial.config["trial"]["name"])
        if int(result.get("epoch", -1)) == trial.config["epochs"] - 1:
            self._end(trial, result, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, trial.last_result, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        _CHANNELS[self.key].log.log(trial.config["trial"]["name"])  # the epochs it finished
        from components.training import launch

        error = trial.get_pickled_error() or RuntimeError(f"trial {trial.config['trial']['name']} failed")
        self._end(trial, None, launch.root_cause(error))
