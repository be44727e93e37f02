"""The one training loop: ``train_loop_per_worker(config)``, shared by train and every tune trial.

It runs the same way in four settings, chosen by the launcher, not by the loop:
in a Ray Train worker group (DDP over N workers), in Ray Train's local mode (in-process),
inside a plain Ray Tune function trial, and in a plain Python call (tests, benchmarks).
What differs between them is injected through ``config.hooks``: objects with
``on_step(row)`` (rank 0, every ``log_every`` steps, buffered) and
``on_batch(epoch, done, per_epoch, step, total_steps)`` (rank 0, after every step; progress),
``on_epoch(metrics, checkpoint_dir)`` (once per epoch: rank 0, or every rank where the hook
sets ``all_ranks = True``; ``checkpoint_dir`` is None on epochs not checkpointed), and optionally
``on_resume(steps, epochs)`` (rank 0, after resuming, with the rows up to the checkpoint) and
``on_end()`` (last, also when the run fails: finish queued work).

The hot path reads nothing from the device but every ``log_every`` steps (``StepMeter``), so
a GPU never waits for the host between steps.

What a run is given is a :class:`LoopConfig` (or the same as a mapping: Ray Train hands the
loop a dict), every field documented there.

An epoch's metrics carry ``val_*`` on the epochs it validates: epoch 0, every ``val_every``-th
and the last (the one a run exports); a sweep trial's, only the last (``final_val_only``).

What one optimisation step does is a ``Step`` object: ``SupervisedStep`` (one optimizer, one
schedule, a loss from ``family.training_step``) unless the family brings its own
``family.Step`` (a GAN's two optimizers, n_critic and EMA). Validation is
``family.validate(model, cfg, data_dir)`` when the family has one (a non-decomposable
metric such as FID), else exact sums of ``family.eval_step`` over the val split.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from components.config import ConfigError, TrainConfig, to_dict
from components.data.registry import open_split
from components.data.shards import ShardDataset, localize, read_stats
from components.models import get_family
from components.params import train_config_from_dict
from components.training import checkpoint as ckpt
from components.training import storage
from components.training.meter import StepMeter, TrainingDiverged
from components.training.steps import SupervisedStep

HISTORY = "steps.jsonl"  # a row every log_every steps
EPOCHS = "epochs.jsonl"  # a row per epoch
RESUMES = "resumes.jsonl"  # a row per restart from a checkpoint
KEEP_CHECKPOINTS = 2


class Hook(Protocol):
    def on_step(self, rows: list[dict[str, float]]) -> None: ...
    def on_epoch(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


class _Context:
    """Rank, world size and device, from Ray Train when inside it."""

    def __init__(self, distributed: bool, use_gpu: bool):
        if distributed:
            import ray.train
            import ray.train.torch

            ctx = ray.train.get_context()
            self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
            self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        else:
            self.rank, self.world_size = 0, 1
            self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def all_gather_int(self, value: int) -> list[int]:
        out = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, torch.tensor([value], dtype=torch.int64, device=self.device))
        return [int(t.item()) for t in out]

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
        return values


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX-512 BF16): without
    them oneDNN emulates bf16 and it runs slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def precision_of(precision: str, device: torch.device, family: Any = None) -> str:
    """``bf16`` or ``fp32`` for ``train.<algo>.precision`` on ``device``.

    ``auto`` is bf16 on a GPU; on a CPU it is bf16 only where the CPU has native bf16 matmuls
    and the family sets ``CPU_BF16 = True`` (a speed-up measured with unchanged quality:
    ``benchmarks/bench_precision.py``), else fp32.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and getattr(family, "CPU_BF16", False) and cpu_has_native_bf16() else "fp32"


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast (torch AMP; bf16 needs no loss scaling) or nothing; ``precision`` is resolved."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to(batch: Iterable[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def _channels_last(batch: tuple) -> tuple:
    """Image batches (floating N, C, H, W) in the NHWC layout that channels_last weights run fastest on."""
    return tuple(t.contiguous(memory_format=torch.channels_last)
                 if isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point() else t for t in batch)


def speed_up(core: nn.Module, family: Any, cfg: Any) -> None:
    """The GPU speed options of ``cfg`` applied to the model in place (the state dict keeps its keys).

    ``compile`` compiles the modules the family names in ``compiled_modules(model)`` (those
    its step calls: a GAN's generator and discriminator), else the model's own forward.
    """
    if cfg.channels_last:
        core.to(memory_format=torch.channels_last)
    if cfg.compile:
        for module in family.compiled_modules(core) if hasattr(family, "compiled_modules") else [core]:
            module.compile()


@torch.no_grad()
def evaluate_split(model: nn.Module, family: Any, cfg: Any, dataset: ShardDataset, ctx: _Context,
                   precision: str) -> dict[str, float]:
    """Mean loss and accuracy over a whole split (``family.eval_step`` with the model config
    ``cfg``), exact across ranks."""
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=None)
    for batch in loader:
        with _autocast(precision, ctx.device):
            out = family.eval_step(model, _to(batch, ctx.device), cfg)
        for k, v in out.items():
            totals[k] = totals.get(k, 0) + torch.as_tensor(v).detach().to(ctx.device, torch.float64)
    keys = sorted(totals)
    # Summed on the device and reduced there (NCCL reduces CUDA tensors only); one read at the end.
    reduced = ctx.all_reduce(torch.stack([totals[k] for k in keys])) if keys else torch.zeros(0)
    sums = dict(zip(keys, reduced.tolist()))
    count = sums.pop("count", 0) or 1
    return {("accuracy" if k == "correct" else k): v / count for k, v in sums.items()}


def read_rows(url: str) -> list[dict]:
    """Rows of a step or epoch table (JSON lines) under the storage root; none if it is absent."""
    return [json.loads(x) for x in (storage.read_text(url) or "").splitlines() if x.strip()]


def _truncate_history(url: str, up_to_step: int) -> list[dict]:
    """Drop rows past the checkpoint we resume from (they will be produced again); returns the kept rows."""
    rows = read_rows(url)
    kept = [r for r in rows if r["step"] <= up_to_step]
    if len(kept) < len(rows):
        storage.write_text(url, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


@dataclass(frozen=True)
class LoopConfig:
    """One run of the loop: what :func:`train_loop_per_worker` is given. Ray hands it, pickled, to
    every worker (Ray Train's ``train_loop_config`` is a mapping: :meth:`of` reads one)."""

    algo: str  # the algorithm's name (in messages and keys of params.yaml)
    train: TrainConfig  # its train section; the model section is bound to the data by the loop
    data_dir: str  # the shard directory: a path, or a URL the stage published it to (shards.publish)
    # Absolute path or URL (under the storage root) where this run keeps epoch checkpoints and its
    # step history; a run restarted with the same run_dir resumes from its latest checkpoint, and
    # one restarted by Ray Train from Ray's.
    run_dir: str
    family: str = ""  # its model family in the registry ("": the algorithm's name)
    distributed: bool = False  # inside a Ray Train worker group or local mode (uses ray.train's context)
    hooks: tuple[Any, ...] = ()  # see the module's docstring
    # Stop after this many epochs (0: train.epochs); the schedule still spans train.epochs, and a
    # run stopped there and started again with a higher cap continues bit for bit.
    max_epochs: int = 0
    train_fraction: float = 1.0  # read this fraction of the train split's shards (at least one per rank)
    single_thread: bool = False  # torch on one thread (a tune trial sharing the machine's cores)
    # Validate the last epoch only (a sweep trial: its rung's decision reads nothing else; a
    # diffusion model's or GAN's validation samples a val split's worth of images, epochs' worth).
    final_val_only: bool = False

    @classmethod
    def of(cls, config: LoopConfig | Mapping[str, Any]) -> LoopConfig:
        """``config`` as a LoopConfig: ``train`` may be a TrainConfig or its ``to_dict`` form;
        an unknown or missing key is an error that names it."""
        if isinstance(config, cls):
            return config
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(names))
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in config]
        if unknown or missing:
            raise TypeError(f"loop config: {'unknown keys ' + str(unknown) if unknown else ''}"
                            f"{'; ' if unknown and missing else ''}{'missing keys ' + str(missing) if missing else ''}"
                            f"; the loop takes {names}")
        values = dict(config)
        if not isinstance(values["train"], TrainConfig):
            values["train"] = train_config_from_dict(values.get("family") or values["algo"], values["train"])
        values.update(data_dir=str(values["data_dir"]), run_dir=str(values["run_dir"]),
                      hooks=tuple(values.get("hooks") or ()))
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a mapping, unconverted (Ray Train's ``train_loop_config``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def train_loop_per_worker(config: LoopConfig | Mapping[str, Any]) -> dict[str, float]:
    """Train ``config.algo`` with ``config.train``; returns the last epoch's metrics."""
    return _Run(LoopConfig.of(config)).fit()


class _Run:
    """One worker's part of a run: set up (data, model, step, resume) on construction, then ``fit``."""

    def __init__(self, config: LoopConfig):
        self.config, self.algo = config, config.algo
        name = config.family or config.algo
        self.family = family = get_family(name)
        # A copy of the typed config: the model section is bound below, the caller's is left as it was.
        self.cfg = cfg = copy.deepcopy(config.train)
        self.hooks: list[Hook] = list(config.hooks)
        self.run_dir = config.run_dir  # a local path or a URL (components.training.storage)
        self.data_dir = localize(config.data_dir)  # a URL under the storage root is copied to this node once
        self.ckpt_root = storage.join(self.run_dir, "checkpoints")
        self.ctx = ctx = _Context(config.distributed, cfg.use_gpu)
        if ctx.world_size > 1 or config.single_thread:
            torch.set_num_threads(1)  # workers sharing a machine's cores; the driver sets nothing

        # Data-derived model fields (a tokenizer's vocabulary, the class count) are bound here and
        # saved in every checkpoint's config, so an exported model rebuilds without the data.
        try:
            cfg.model = family.bind(cfg.model, read_stats(self.data_dir), self.data_dir)
        except ConfigError as exc:  # the family names the model section's keys; the algorithm's section is this
            raise ConfigError(f"train.{config.algo}.model: {exc}") from None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.core = family.build(cfg.model).to(ctx.device)
        speed_up(self.core, family, cfg)
        self.train_ds, self.val_ds = self._datasets()
        self.steps_per_epoch = []
        for e in range(cfg.epochs):
            self.train_ds.set_epoch(e)
            self.steps_per_epoch.append(self.train_ds.num_batches())
        self.total_steps = sum(self.steps_per_epoch)
        self.precision = precision_of(cfg.precision, ctx.device, family)
        self.stepper = getattr(family, "Step", SupervisedStep)(self.core, cfg, family, self.total_steps,
                                                               lambda: _autocast(self.precision, ctx.device))
        self.start_epoch, self.step, self.resumed = self._resume()
        self.stepper.distribute(ctx.world_size)
        self.max_epochs = min(cfg.epochs, config.max_epochs or cfg.epochs)

    def _datasets(self) -> tuple[ShardDataset, ShardDataset]:
        cfg, ctx, data_dir = self.cfg, self.ctx, self.data_dir
        # A family may shape how its batches are built (a GNN's neighbour sampling on several workers).
        loader_options = (self.family.loader_options(cfg.model, ctx.world_size)
                          if hasattr(self.family, "loader_options") else {})
        # Image batches cross from the loader workers (and to a GPU) as uint8 and are scaled on arrival.
        # Read shards stay in memory up to data_cache_mb where the reading process outlives the epoch.
        cache = cfg.data_cache_mb << 20
        max_shards = None
        if self.config.train_fraction < 1.0:
            n_shards = len(read_stats(data_dir)["splits"]["train"]["shards"])
            max_shards = max(ctx.world_size, math.ceil(self.config.train_fraction * n_shards))
        # batch_tokens: batches of about that many tokens, as many on every rank (agreed from stats.json).
        train = open_split(data_dir, "train", rank=ctx.rank, world_size=ctx.world_size, shuffle=True,
                             seed=cfg.seed, batch_size=cfg.batch_size, uint8_images=True, **loader_options,
                             cache_bytes=cache if cfg.loader_workers == 0 or cfg.loader_persistent else 0,
                             max_shards=max_shards, batch_tokens=cfg.batch_tokens)
        # Validation is read in this process, dealt to the ranks by sample (equal work on every rank).
        val = open_split(data_dir, "val", rank=ctx.rank, world_size=ctx.world_size,
                           batch_size=max(256, cfg.batch_size), cache_bytes=cache, batch_tokens=cfg.batch_tokens)
        return train, val

    def _resume(self) -> tuple[int, int, bool]:
        """Load the newer of Ray Train's last registered checkpoint (after a worker-group restart;
        Ray registers a report a moment after it is made) and our own latest in run_dir, if any:
        (first epoch to run, step, whether resumed)."""
        ctx, algo = self.ctx, self.algo
        start_epoch, step, resumed_from, source_kind = 0, 0, None, None
        ray_ckpt = None
        if self.config.distributed:
            import ray.train
            ray_ckpt = ray.train.get_checkpoint()
        with contextlib.ExitStack() as stack:
            candidates = []
            if ray_ckpt is not None:
                candidates.append(("ray", stack.enter_context(ray_ckpt.as_directory())))
            own = ckpt.latest(self.ckpt_root)
            if own is not None:
                candidates.append(("run_dir", own))
            if candidates:
                source_kind, source = (candidates[0] if len(candidates) == 1
                                       else max(candidates, key=lambda c: ckpt.epoch_of(c[1])))
                state, _ = ckpt.load(source)
                self.core.load_state_dict(state["model"])
                self.stepper.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["torch_rng"])
                start_epoch, step, resumed_from = state["epoch"] + 1, state["step"], str(source)
        if ctx.world_size > 1:  # every rank must resume from the same epoch, or the group deadlocks
            starts = ctx.all_gather_int(start_epoch)
            if len(set(starts)) > 1:
                raise RuntimeError(f"{algo}: workers found different checkpoints to resume from (epochs "
                                   f"{[s - 1 for s in starts]}): runtime.storage_root must be shared by every node "
                                   f"(a shared mount or a URL), not a node-local path")
        if ctx.rank == 0:
            run_dir = self.run_dir
            storage.makedirs(run_dir)
            steps_done, epochs_done = (_truncate_history(storage.join(run_dir, name), step) for name in (HISTORY, EPOCHS))
            if resumed_from is not None:
                # What a restart cost: the work after this checkpoint is done again (at most one epoch).
                storage.append_text(storage.join(run_dir, RESUMES), json.dumps({
                    "from_epoch": start_epoch - 1, "step": step, "source": source_kind,
                    "time": time.time()}) + "\n")
                print(f"{algo}: resuming after epoch {start_epoch} of {self.cfg.epochs} (step {step}) "
                      f"({'Ray Train' if source_kind == 'ray' else 'run directory'} checkpoint)", flush=True)
                for hook in self.hooks:
                    if hasattr(hook, "on_resume"):
                        hook.on_resume(steps_done, epochs_done)
        return start_epoch, step, resumed_from is not None

    def _validate(self) -> dict[str, float]:
        # DDP hands rank 0's buffers (BatchNorm's running statistics) to the others at each
        # forward; after the epoch's last step every rank holds its own. Validation uses rank
        # 0's, the ones its checkpoint saves, so the val metric is that of the saved model.
        if self.ctx.world_size > 1:
            for buffer in self.core.buffers():
                torch.distributed.broadcast(buffer, 0)
        if hasattr(self.family, "validate"):
            self.core.eval()
            return self.family.validate(self.core, self.cfg.model, self.data_dir)
        return evaluate_split(self.core, self.family, self.cfg.model, self.val_ds, self.ctx, self.precision)

    def fit(self) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        workers = {"persistent_workers": cfg.loader_persistent, "prefetch_factor": cfg.loader_prefetch}
        loader = torch.utils.data.DataLoader(self.train_ds, batch_size=None, num_workers=cfg.loader_workers,
                                             pin_memory=ctx.device.type == "cuda",
                                             **(workers if cfg.loader_workers else {}))
        metrics: dict[str, float] = {"epoch": self.start_epoch - 1, "resumed": float(self.resumed)}
        try:
            for epoch in range(self.start_epoch, self.max_epochs):
                metrics, rows = self._epoch(loader, epoch)
                self._record(epoch, metrics, rows)
        finally:  # hooks that queue work (MLflow's logging thread) finish it, also when the run fails
            for hook in self.hooks:
                if hasattr(hook, "on_end") and (ctx.rank == 0 or getattr(hook, "all_ranks", False)):
                    hook.on_end()
        return metrics

    def _epoch(self, loader: torch.utils.data.DataLoader, epoch: int) -> tuple[dict[str, float], list[dict]]:
        """Train one epoch (and validate, on the epochs that do): its metrics and step rows."""
        cfg, ctx, algo, train_ds = self.cfg, self.ctx, self.algo, self.train_ds
        batch_hooks = [h for h in self.hooks if hasattr(h, "on_batch")] if ctx.rank == 0 else []
        self.core.train()
        train_ds.set_epoch(epoch)
        # Augmentation and dropout draw from a stream fixed by (seed, epoch, rank): each rank its own,
        # and an epoch replays exactly after a restart from the previous epoch's checkpoint.
        torch.manual_seed(zlib.crc32(f"{cfg.seed}/{epoch}/{ctx.rank}".encode()))
        t0, seen, rows = time.perf_counter(), 0, []
        batcher = train_ds.batcher  # the dataset's: what a batch needs on the device, what it tallies
        tallies: list[float] | None = None  # the epoch's sums of batcher.tally (text: tokens, padded cells), host-side
        # Sums stay on the device; the host reads them at logged steps and at the epoch's end only.
        meter = StepMeter(ctx.device, algo, f"lower train.{algo}.lr (now {cfg.lr}) or set train.{algo}.grad_clip")
        first_step = step = self.step
        out = None
        for batch in loader:
            tally = batcher.tally(batch)
            if tally:
                tallies = list(tally) if tallies is None else [a + b for a, b in zip(tallies, tally)]
            batch = batcher.on_device(_to(batch, ctx.device))
            if cfg.channels_last:
                batch = _channels_last(batch)
            out = self.stepper(batch, step)
            meter.add(out)
            step += 1
            seen += len(batch[-1])  # the targets: one per sample (images, sentence pairs, seed nodes, graphs)
            if step % cfg.log_every == 0 or step == 1:
                row = meter.row(step, epoch, out.log)
                if ctx.rank == 0:
                    rows.append(row)
            for hook in batch_hooks:
                hook.on_batch(epoch, step - first_step, self.steps_per_epoch[epoch], step, self.total_steps)
        self.step = step
        log = out.log if out is not None else {}
        totals = meter.totals(step, epoch, log)
        n_meter = len(totals)
        if tallies is not None:
            totals = torch.cat([totals, totals.new_tensor(tallies)])
        train_totals = ctx.all_reduce(totals).tolist()
        # Timed after the totals are read: the device has drained its queue and every rank has finished.
        elapsed = time.perf_counter() - t0
        last = epoch == self.max_epochs - 1
        val = self._validate() if last or (epoch % cfg.val_every == 0 and not self.config.final_val_only) else {}
        count = max(train_totals[2], 1)
        metrics = {
            "epoch": epoch, "step": step, "lr": float(log.get("lr", 0.0)),
            "train_loss": train_totals[0] / count,
            **({"train_accuracy": train_totals[1] / count} if meter.has_correct else {}),
            **{f"val_{k}": v for k, v in val.items()},
            "samples_per_s": seen * ctx.world_size / max(elapsed, 1e-9), "epoch_time_s": elapsed,
            # What the dataset's batcher makes of the epoch's tallies (text: the share of padding).
            **({f"train_{k}": v for k, v in batcher.summarize(train_totals[n_meter:]).items()} if tallies else {}),
        }
        bad = {k: v for k, v in val.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(f"{algo}: validation {', '.join(f'{k} is {v}' for k, v in bad.items())} after "
                                   f"epoch {epoch}; lower train.{algo}.lr (now {cfg.lr}); nothing was registered")
        return metrics, rows

    def _record(self, epoch: int, metrics: dict[str, float], rows: list[dict]) -> None:
        """Append the epoch's rows, checkpoint it when due (rank 0) and tell the hooks."""
        rank, run_dir = self.ctx.rank, self.run_dir
        checkpoint_dir = None
        if rank == 0:
            storage.append_text(storage.join(run_dir, HISTORY), "".join(json.dumps(r) + "\n" for r in rows))
            storage.append_text(storage.join(run_dir, EPOCHS), json.dumps(metrics) + "\n")
        # Every checkpoint_every-th epoch and the last are saved (a restart repeats the epochs since).
        if rank == 0 and ckpt.due(epoch, self.cfg.checkpoint_every, self.max_epochs):
            checkpoint_dir = ckpt.save(ckpt.epoch_dir(self.ckpt_root, epoch), model=self.core,
                                       optimizer=self.stepper.state_dict(), epoch=epoch, step=self.step,
                                       config=to_dict(self.cfg), metrics=metrics)
            ckpt.prune(self.ckpt_root, KEEP_CHECKPOINTS)
        for hook in self.hooks:  # rank 0 only, unless the hook must hear from every rank (Ray Train's report)
            if rank == 0:
                hook.on_step(rows)
            if rank == 0 or getattr(hook, "all_ranks", False):
                hook.on_epoch(metrics, checkpoint_dir)
