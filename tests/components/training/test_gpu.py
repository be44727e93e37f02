"""Every algorithm's training loop on a CUDA device, as the train stage runs it (skipped without
one; `benchmarks/gpu_check.py` prints the same run's figures)."""

from __future__ import annotations

import math

import pytest
import torch

from components.config import to_dict
from components.params import family_name, train_config
from components.training.loop import train_loop_per_worker
from tests.conftest import ALGOS, Recorder, dataset_shards, first_steps

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("algo", ALGOS)
def test_one_epoch_on_the_gpu_in_bf16(algo, repo_params, tmp_path):
    shards = dataset_shards(repo_params, repo_params["algorithms"][algo]["dataset"], tmp_path)
    cfg = train_config(repo_params, algo)
    cfg.epochs, cfg.use_gpu, cfg.num_workers = 1, True, 0
    rec = Recorder()
    train_loop_per_worker({"algo": algo, "family": family_name(repo_params, algo), "train": to_dict(cfg),
                           "data_dir": str(shards), "run_dir": str(tmp_path / "run"), "hooks": [rec]})
    assert len(rec.epochs) == 1 and not any(math.isnan(v) for v in rec.epochs[0][0].values())  # finished


def host_syncs(run) -> list[str]:
    """Every host sync ``run()`` makes, as the project's frames that asked for it (innermost last),
    with how often: CUDA's sync debug mode in "warn" mode, whose warnings are collected rather than
    raised, so one sync cannot hide the ones after it."""
    import threading
    import traceback
    import warnings
    from collections import Counter
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[3])
    seen: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        stack = traceback.extract_stack()[:-1]
        frames = [f for f in stack if f.filename.startswith(root) and "/tests/" not in f.filename] or stack[-4:]
        thread = threading.current_thread().name
        seen[(f"[thread {thread}] " if thread != "MainThread" else "") + " <- ".join(
            f"{Path(f.filename).relative_to(root) if f.filename.startswith(root) else f.filename}:{f.lineno} {f.line}"
            for f in reversed(frames[-3:]))] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [f"{n} x {where}" for where, n in seen.most_common()]


@pytest.mark.parametrize("algo", ALGOS)
def test_a_training_step_never_waits_for_the_gpu(algo, repo_params, tmp_path):
    """The step and the meter queue work only: no host sync (``.item()``, ``float()``, a blocking
    copy, a data-dependent shape) between the reads the meter makes every log_every steps. Lists
    every sync four steps make, not only the first."""
    shards = dataset_shards(repo_params, repo_params["algorithms"][algo]["dataset"], tmp_path)
    step, meter, batches = first_steps(repo_params, algo, shards, "cuda")

    def steps():
        for i, batch in enumerate(batches[1:], start=1):
            meter.add(step(batch, i))

    syncs = host_syncs(steps)
    assert not syncs, f"{algo}: {len(syncs)} host sync site(s) in 4 training steps:\n" + "\n".join(syncs)
    assert meter.totals(len(batches), 0, {})[2].item() > 0


def test_the_speed_options_train_on_the_gpu(repo_params, tmp_path):
    shards = dataset_shards(repo_params, "digits", tmp_path)
    cfg = train_config(repo_params, "resnet")
    cfg.epochs, cfg.use_gpu, cfg.num_workers = 2, True, 0
    cfg.channels_last, cfg.compile, cfg.loader_workers, cfg.loader_persistent = True, True, 2, True
    cfg.optimizer.implementation = "fused"
    rec = Recorder()
    m = train_loop_per_worker({"algo": "resnet", "train": to_dict(cfg), "data_dir": str(shards),
                               "run_dir": str(tmp_path / "run"), "hooks": [rec]})
    assert m["val_accuracy"] > 0.5 and len(rec.epochs) == 2
