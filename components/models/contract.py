"""The family contract: what a module registered in ``FAMILIES`` exports, checked when it loads.

A family is a module (one file per algorithm family, its model code beside it). :class:`Family`
is the contract as a Protocol, for readers and type checkers; :func:`check` holds a module to it
when :func:`components.models.get_family` loads it, so a family that forgets a piece, or takes
other arguments than the pipeline passes, fails at once with the missing name instead of deep
in a stage. ``tests/components/models/test_contract.py`` also runs every registered family
through the contract end to end on tiny data.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar, Literal, Protocol

from components.conformance import call_problems
from components.evaluation.report import Report as Report  # what report() returns

Mode = Literal["max", "min"]
MODES = ("max", "min")


class Family(Protocol):
    """One algorithm family. Data-derived fields (a tokenizer, the class count, the image size)
    are bound into the model config from the shards before the model is built, and travel with
    it in every checkpoint and registered model."""

    Config: ClassVar[type]  # the ``train.<algo>.model`` section, a dataclass
    PAPER: ClassVar[str]  # the paper(s) the family implements, for the model card
    PRIMARY_METRIC: ClassVar[str]  # the test metric register compares (a key of evaluate's result)
    PRIMARY_MODE: ClassVar[Mode]
    SELECT_BY: ClassVar[tuple[tuple[str, Mode], ...]]  # evaluate picks a candidate on val by these, in order
    VAL_METRIC: ClassVar[str]  # the per-epoch metric (``val_*``) the sweep compares and early stopping reads
    VAL_MODE: ClassVar[Mode]
    # Optional: GENERATES = "images" for a family whose evaluate scores samples with the shared
    # evaluator (``generative.score_samples(..., bounds=True)``); two or more such algorithms on one
    # dataset are compared by its compare stage. SERVING_REQUIREMENTS: pip requirements its
    # ``predict`` needs beyond pipelines/register.py's PIP_REQUIREMENTS (a served model installs both).

    def bind(self, cfg: Any, stats: dict, data_dir: Any) -> Any:
        """``cfg`` with its data-derived fields filled (or checked) from ``stats.json`` and the shards;
        a ConfigError names keys of the model section (the loop prefixes ``train.<algo>.model``)."""

    def build(self, cfg: Any) -> Any:
        """The ``nn.Module`` of a bound config."""

    # Training: ``training_step`` under the shared optimisation step, or a ``Step`` class of the
    # family's own whose call returns a ``StepResult`` (``components/training/steps.py``: a GAN's
    # two optimizers).
    def training_step(self, model: Any, batch: tuple, cfg: Any, label_smoothing: float = 0.0,
                      progress: float = 0.0) -> dict:
        """``loss`` (and optionally ``correct``, ``count``, ``log``) of one batch."""

    # Validation per epoch: sums of ``eval_step`` over the val split, or ``validate`` for a
    # metric that is not a sum over batches (FID).
    def eval_step(self, model: Any, batch: tuple, cfg: Any) -> dict:
        """Sums over a batch (``loss``, ``count``, ...), all-reduced into exact means per ``count``;
        the mean of ``correct`` is reported as ``accuracy``."""

    def evaluate(self, model: Any, cfg: Any, shard_dir: Any, split: str, detail: bool = True) -> dict:
        """The evaluate stage's metrics on a split; ``detail``: the costly extras (test of the selected)."""

    def report(self, result: dict, title: str, name: str, where: str) -> Report:
        """``result`` (of ``evaluate``) as markdown and figures for the candidate ``name``; the
        markdown names a figure as ``<where>/<file>``, where the stage writes it. Writes nothing."""

    def predict(self, model: Any, inputs: Any, cfg: Any) -> Any:
        """The registered model's pyfunc: raw inputs (``serving_example``'s shape) to outputs."""

    def signature(self, cfg: Any) -> Any:
        """The MLflow ``ModelSignature`` of ``predict``."""

    def serving_example(self, cfg: Any) -> Any:
        """A small valid input of ``predict`` (the registry's input example)."""

    def usage(self, name: str, cfg: Any) -> str:
        """One line of markdown: how to load the registered model ``name`` and call it."""


# How the pipeline calls each function (placeholder arguments): a family's function must accept it.
CALLS: dict[str, tuple[tuple, dict]] = {
    "bind": ((0, 0, 0), {}),
    "build": ((0,), {}),
    "training_step": ((0, 0, 0), {"label_smoothing": 0.0, "progress": 0.0}),
    "eval_step": ((0, 0, 0), {}),
    "evaluate": ((0, 0, 0, 0), {"detail": True}),
    "report": ((0, 0, 0, 0), {}),
    "predict": ((0, 0, 0), {}),
    "signature": ((0,), {}),
    "serving_example": ((0,), {}),
    "usage": ((0, 0), {}),
    "loader_options": ((0, 0), {}),  # optional: extra ShardDataset arguments of the train split
    "validate": ((0, 0, 0), {}),  # optional: replaces eval_step's sums as the per-epoch val metric
    "compiled_modules": ((0,), {}),  # optional: what ``compile`` compiles (default: the model)
    "Step": ((0, 0, 0, 0), {"autocast": None}),  # optional: the family's own step (SupervisedStep's contract)
}
STEP_METHODS = ("distribute", "__call__", "state_dict", "load_state_dict")
REQUIRED = ("Config", "PAPER", "PRIMARY_METRIC", "PRIMARY_MODE", "SELECT_BY", "VAL_METRIC", "VAL_MODE",
            "bind", "build", "evaluate", "report", "predict", "signature", "serving_example", "usage")
ONE_OF = (("training_step", "Step"), ("eval_step", "validate"))
OPTIONAL = ("loader_options", "compiled_modules", "Step", "validate")


def problems(module: ModuleType) -> list[str]:
    """What ``module`` lacks or gets wrong of the contract, one line each (empty: it conforms)."""
    out = [f"lacks {name}" for name in REQUIRED if not hasattr(module, name)]
    out += [f"lacks {a} (or {b})" for a, b in ONE_OF if not hasattr(module, a) and not hasattr(module, b)]
    out += call_problems(module, CALLS)
    step = getattr(module, "Step", None)
    if step is not None:
        out += [f"Step lacks {m}" for m in STEP_METHODS if not callable(getattr(step, m, None))]
    for name in ("PRIMARY_MODE", "VAL_MODE"):
        if hasattr(module, name) and getattr(module, name) not in MODES:
            out.append(f"{name} is {getattr(module, name)!r}, not one of {MODES}")
    select = getattr(module, "SELECT_BY", ())
    if hasattr(module, "SELECT_BY") and (not select or any(len(s) != 2 or s[1] not in MODES for s in select)):
        out.append(f"SELECT_BY must be a non-empty tuple of (metric, mode) pairs, mode in {MODES}; got {select!r}")
    if hasattr(module, "VAL_METRIC") and not str(module.VAL_METRIC).startswith("val_"):
        out.append(f"VAL_METRIC {module.VAL_METRIC!r} must name a per-epoch metric, val_<metric>")
    return out


def check(module: ModuleType, name: str) -> None:
    """Raise TypeError naming everything ``module`` (registered as ``name``) gets wrong of the contract."""
    found = problems(module)
    if found:
        raise TypeError(f"family {name!r} ({module.__name__}) does not meet the family contract "
                        f"(components/models/contract.py): " + "; ".join(found))
