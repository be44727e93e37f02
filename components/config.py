"""Typed, validated views of ``params.yaml``.

Every section of ``params.yaml`` has a dataclass here (or, for a model family, in
``components/models/<family>.py``) that mirrors it one to one. :func:`parse` builds a
dataclass from plain YAML data and fails on the first unknown key, wrong type or
out-of-range value with the key's full dotted path, e.g.
``train.resnet.optimizer.momentum: must be in [0, 1), got 1.5``.

Ranges and choices live next to the field they constrain::

    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    name: Literal["sgd", "adam"] = "sgd"
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union


T = TypeVar("T")


class ConfigError(ValueError):
    """A value in params.yaml is missing, unknown, mistyped or out of range."""


def bounds(*, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> dict[str, float | None]:
    """Field metadata declaring the closed/open interval a number must lie in."""
    return {"ge": ge, "gt": gt, "le": le, "lt": lt}


def _check_bounds(value: float, meta: typing.Mapping[str, Any], path: str) -> None:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    ok = ((ge is None or value >= ge) and (gt is None or value > gt)
          and (le is None or value <= le) and (lt is None or value < lt))
    if not ok:
        lo = f"[{ge}" if ge is not None else (f"({gt}" if gt is not None else "(-inf")
        hi = f"{le}]" if le is not None else (f"{lt})" if lt is not None else "inf)")
        raise ConfigError(f"{path}: must be in {lo}, {hi}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)} ({'; '.join(errors)})")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: must be a list, got {type(value).__name__} {value!r}")
        (item_tp, *rest) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads 1e-4 (no dot) as a string; accept it when it is a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported annotation {tp!r}")  # a bug in a dataclass, not in params


def parse(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass ``cls`` from the mapping ``data`` found at ``path`` in params.yaml."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key_path}: required key is missing")
            continue
        kwargs[name] = _checked(data[name], hints[name], f, key_path)
    return _validated(cls(**kwargs), path)


def _checked(value: Any, tp: Any, f: dataclasses.Field, path: str) -> Any:
    """One key's value in the field's type and range (its ``bounds`` metadata)."""
    value = _coerce(value, tp, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and f.metadata:
        _check_bounds(value, f.metadata, path)
    return value


def _validated(obj: T, path: str) -> T:
    """``obj`` after its section's own ``validate`` (checks across keys), errors prefixed with ``path``."""
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc}") from None
    return obj


def replace(obj: T, path: str, **changes: Any) -> T:
    """``obj`` (a config dataclass) with ``changes``, each checked as :func:`parse` checks a value of
    params.yaml (type, range, the section's ``validate``), errors naming ``path.<key>``: a typed
    config changed in place of a round trip through its plain form. A change that is itself a
    config dataclass of the field's type is taken as it is (build it with this function)."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj) if f.init}
    checked = {}
    for name, value in changes.items():
        if name not in fields:
            raise ConfigError(f"{path}.{name}: unknown key; valid keys are {sorted(fields)}")
        typed = dataclasses.is_dataclass(hints[name]) and isinstance(value, hints[name])
        checked[name] = value if typed else _checked(value, hints[name], fields[name], f"{path}.{name}")
    return _validated(dataclasses.replace(obj, **checked), path)


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (for MLflow params and checkpoints)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# --------------------------------------------------------------------------- sections

@dataclass
class OptimizerConfig:
    """``train.<algo>.optimizer``. Weight decay never applies to norm or bias parameters."""
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=bounds(ge=0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = field(default=1e-8, metadata=bounds(gt=0))
    alpha: float = field(default=0.99, metadata=bounds(gt=0, lt=1))  # RMSProp smoothing
    # How the update runs: PyTorch's default (one kernel per parameter on CPU, grouped "foreach"
    # kernels on CUDA), "foreach", or "fused" (one kernel for all parameters; SGD, Adam, AdamW).
    implementation: Literal["auto", "foreach", "fused"] = "auto"

    def validate(self) -> None:
        if self.implementation == "fused" and self.name == "rmsprop":
            raise ConfigError("implementation: PyTorch has no fused RMSProp; use auto or foreach")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: must be two numbers in [0, 1), got {self.betas}")
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise ConfigError("nesterov: needs momentum > 0; set momentum or nesterov: false")


SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine",
             "linear", "inverse_sqrt", "onecycle")


@dataclass
class ScheduleConfig:
    """``train.<algo>.schedule``: a learning-rate schedule as a function of the step.

    Lengths are fractions of the whole run so that one setting means the same thing at
    any number of epochs; ``lr`` of the training section is the peak learning rate.
    """
    name: Literal["constant", "step", "multistep", "exponential", "cosine",
                  "linear", "inverse_sqrt", "onecycle"] = "cosine"
    warmup: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    min_lr_ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))
    step_every: float = field(default=0.3, metadata=bounds(gt=0, le=1))
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = field(default=0.1, metadata=bounds(gt=0, le=1))
    pct_start: float = field(default=0.3, metadata=bounds(gt=0, lt=1))
    div_factor: float = field(default=25.0, metadata=bounds(ge=1))
    final_div_factor: float = field(default=1e4, metadata=bounds(ge=1))

    def validate(self) -> None:
        if any(not 0 < m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ConfigError(f"milestones: must be increasing fractions in (0, 1), got {self.milestones}")
        if self.name == "inverse_sqrt" and self.warmup == 0:
            raise ConfigError("warmup: inverse_sqrt needs a warm-up fraction > 0")


@dataclass
class RuntimeConfig:
    """``runtime``: where Ray results, checkpoints and shards' copies live.

    ``storage_root`` empty means ``<repo>/.runs``; it may be a shared mount or a URL
    (``s3://``, ``gs://``, ``file://``) on a cluster. ``RAY_ADDRESS`` and
    ``MLFLOW_TRACKING_URI`` are read from the environment, not from here.
    """
    storage_root: str = ""
    ray_num_cpus: int = field(default=0, metadata=bounds(ge=0))  # 0 = all cores
    # Restarts of a train worker group that lost a worker; each resumes from the last epoch checkpoint.
    max_failures: int = field(default=2, metadata=bounds(ge=0))


@dataclass
class TrainConfig:
    """``train.<algo>``: one training run; the same shape feeds every tune trial.

    ``num_workers`` is the number of Ray Train workers: 0 runs the loop in-process
    (Ray Train's local mode), N >= 1 starts a DDP worker group of N. ``tuned`` trains with
    the schedule, peak LR and warm-up that the tune stage's sweep chose
    (``models/<algo>/tune/best.yaml``) instead of the ones written here.
    """
    lr: float = field(default=0.1, metadata=bounds(gt=0, le=10))
    epochs: int = field(default=30, metadata=bounds(ge=1))
    tuned: bool = True
    batch_size: int = field(default=64, metadata=bounds(ge=1))
    # > 0: batches of about this many tokens (source + target, before padding) instead of batch_size
    # samples, pairs bucketed by length (Vaswani et al. 2017: ~25,000 + 25,000); text datasets only.
    batch_tokens: int = field(default=0, metadata=bounds(ge=0))
    seed: int = 0
    num_workers: int = field(default=0, metadata=bounds(ge=0))
    loader_workers: int = field(default=0, metadata=bounds(ge=0))
    use_gpu: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    grad_clip: float = field(default=0.0, metadata=bounds(ge=0))  # 0 = off
    label_smoothing: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    log_every: int = field(default=10, metadata=bounds(ge=1))  # steps between logged rows
    # Validate after epoch 0, every val_every-th epoch after it and the last one: a family whose
    # val metric costs more than its epoch (sampling for FID) validates less often. A tune trial
    # validates at the end of each rung only (where it is compared).
    val_every: int = field(default=1, metadata=bounds(ge=1))
    # Epochs between checkpoints (the last epoch is always saved): a restart repeats at most this many.
    checkpoint_every: int = field(default=1, metadata=bounds(ge=1))
    # MiB of read shards each reading process (trainer or loader worker) keeps in memory for the
    # next epochs; 0 streams every epoch from disk. Bounded: a larger dataset streams the rest.
    data_cache_mb: int = field(default=512, metadata=bounds(ge=0))
    # Speed options for GPUs (off by default; each is measured in benchmarks/bench_gpu.py):
    channels_last: bool = False  # NHWC memory layout for the conv families (tensor cores prefer it)
    compile: bool = False  # torch.compile the model's forward (the family's compiled_modules)
    loader_persistent: bool = False  # loader workers (and their shard cache) live across epochs
    loader_prefetch: int = field(default=2, metadata=bounds(ge=1))  # batches each loader worker readies ahead
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: Any = None  # the family's Config dataclass, parsed by train_config()


def with_schedule(train: TrainConfig, path: str, lr: float, name: str, warmup: float) -> TrainConfig:
    """``train`` with another peak LR, schedule and warm-up (a sweep trial's, or the winner that
    train trains), checked as params.yaml's values are; its other schedule keys kept."""
    return replace(train, path, lr=lr, schedule=replace(train.schedule, f"{path}.schedule", name=name, warmup=warmup))


@dataclass
class SearchSpace:
    """``tune.<algo>.space``: what a sweep varies on top of ``train.<algo>``."""
    schedule: list[str] = field(default_factory=lambda: ["cosine", "step", "onecycle"])  # each one is tried
    lr: list[float] = field(default_factory=lambda: [0.02, 0.4])  # peak LR, log-uniform in [low, high]
    warmup: list[float] = field(default_factory=lambda: [0.0, 0.1])  # warm-up fraction, one of these

    def validate(self) -> None:
        bad = [s for s in self.schedule if s not in SCHEDULES]
        if bad or not self.schedule:
            raise ConfigError(f"schedule: unknown schedule {bad}; valid: {list(SCHEDULES)}")
        if len(self.lr) != 2 or not 0 < self.lr[0] <= self.lr[1]:
            raise ConfigError(f"lr: must be [low, high] with 0 < low <= high, got {self.lr}")
        if not self.warmup or any(not 0 <= w < 1 for w in self.warmup):
            raise ConfigError(f"warmup: must be a non-empty list of fractions in [0, 1), got {self.warmup}")
        if "inverse_sqrt" in self.schedule and not any(w > 0 for w in self.warmup):
            raise ConfigError(f"warmup: inverse_sqrt needs a warm-up > 0 among the choices, got {self.warmup}; "
                              f"add one (e.g. 0.1) or drop inverse_sqrt from schedule")


@dataclass
class TuneConfig:
    """``tune.<algo>``: a sweep of learning-rate schedules by synchronous successive halving
    (``components/training/sweep.py``), selected on val; its winner is what train trains.

    ``len(space.schedule) * samples_per_schedule`` drawn trials plus ``train.<algo>``'s own
    config train ``grace_period`` epochs; the best ``1/reduction_factor`` go on to
    ``grace_period * reduction_factor`` epochs, and so on up to ``epochs``, the budget every
    trial's schedule spans. ``train_fraction`` < 1 trains the trials on the first part of the
    train split's shards (a cheaper epoch where one epoch of the whole split is costly).
    """
    samples_per_schedule: int = field(default=3, metadata=bounds(ge=1))
    epochs: int = field(default=12, metadata=bounds(ge=1))
    grace_period: int = field(default=2, metadata=bounds(ge=1))
    reduction_factor: int = field(default=3, metadata=bounds(ge=2))
    train_fraction: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    max_concurrent: int = field(default=0, metadata=bounds(ge=0))  # 0 = one per core; never changes the winner
    workers_per_trial: int = field(default=0, metadata=bounds(ge=0))  # >0: a TorchTrainer per trial
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)

    def validate(self) -> None:
        if self.grace_period > self.epochs:
            raise ConfigError(f"grace_period: must be <= epochs ({self.epochs}), got {self.grace_period}")


@dataclass
class RegisterConfig:
    """``register``: how candidates become model versions."""
    min_improvement: float = field(default=0.0, metadata=bounds(ge=0))
