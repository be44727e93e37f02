"""Learning-rate schedules as pure functions of the optimisation step.

Each function maps a 0-based ``step`` to a learning rate; nothing here holds state, so
a checkpoint only needs the step to restore the schedule exactly. The formulas:

- step decay:        lr * gamma ** floor(step / step_size)
- multistep:         lr * gamma ** (number of milestones <= step)
- exponential:       lr * gamma ** step
- cosine annealing:  min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2  (Loshchilov & Hutter 2017),
                     after an optional linear warm-up
- linear:            linear warm-up to lr, then linear decay to min_lr
- inverse sqrt:      d_model**-0.5 * min(s**-0.5, s * warmup**-1.5), s = step + 1
                     (Vaswani et al. 2017, eq. 3)
- one-cycle:         cosine rise from lr/div to lr over pct_start, then cosine fall to
                     lr/(div*final_div) (Smith & Topin 2019; torch's OneCycleLR with
                     anneal_strategy="cos")
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from components.config import ScheduleConfig

Schedule = Callable[[int], float]


def constant(step: int, lr: float) -> float:
    return lr


def step_decay(step: int, lr: float, step_size: int, gamma: float) -> float:
    return lr * gamma ** (step // step_size)


def multistep(step: int, lr: float, milestones: Sequence[int], gamma: float) -> float:
    return lr * gamma ** bisect.bisect_right(sorted(milestones), step)


def exponential(step: int, lr: float, gamma: float) -> float:
    return lr * gamma ** step


def _warmup(step: int, lr: float, warmup_steps: int) -> float:
    # Linear ramp that reaches lr at step == warmup_steps; never 0 at step 0.
    return lr * (step + 1) / (warmup_steps + 1)


def cosine(step: int, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return _warmup(step, lr, warmup_steps)
    t = min(step - warmup_steps, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t / max(1, total_steps - warmup_steps))) / 2


def linear(step: int, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return _warmup(step, lr, warmup_steps)
    frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr + (min_lr - lr) * frac


def inverse_sqrt(step: int, d_model: int, warmup_steps: int) -> float:
    """The Transformer schedule; peaks at ``step + 1 == warmup_steps`` with d_model**-0.5 * warmup**-0.5."""
    s = step + 1
    return d_model ** -0.5 * min(s ** -0.5, s * warmup_steps ** -1.5)


def onecycle(step: int, lr: float, total_steps: int, pct_start: float = 0.3,
             div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    initial_lr = lr / div_factor
    min_lr = initial_lr / final_div_factor
    peak_step = float(pct_start * total_steps) - 1
    end_step = float(total_steps - 1)

    def cos_anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    if step <= peak_step:
        return cos_anneal(initial_lr, lr, step / peak_step if peak_step > 0 else 1.0)
    return cos_anneal(lr, min_lr, min(1.0, (step - peak_step) / (end_step - peak_step)))


def build(cfg: ScheduleConfig, lr: float, total_steps: int) -> Schedule:
    """The schedule named in ``cfg`` as a function of step, peaking at ``lr``.

    Fractions in ``cfg`` (warm-up, step_every, milestones) are turned into steps of a run
    of ``total_steps``. A warm-up ramps linearly to ``lr``; cosine and linear then decay over
    the remaining steps, and step/multistep/exponential/constant start after it. One-cycle
    ignores it: its rise is its own warm-up (``pct_start``). For ``inverse_sqrt`` the curve is the paper's, rescaled so that
    its peak equals ``lr`` (the paper's own peak is d_model**-0.5 * warmup**-0.5).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = round(cfg.warmup * total_steps)
    min_lr = lr * cfg.min_lr_ratio
    name = cfg.name
    if name == "constant":
        fn = lambda s: constant(s, lr)  # noqa: E731
    elif name == "step":
        size = max(1, round(cfg.step_every * total_steps))
        fn = lambda s: step_decay(s, lr, size, cfg.gamma)  # noqa: E731
    elif name == "multistep":
        marks = [round(m * total_steps) for m in cfg.milestones]
        fn = lambda s: multistep(s, lr, marks, cfg.gamma)  # noqa: E731
    elif name == "exponential":
        # gamma is the factor over the whole run: lr ends at lr * gamma.
        per_step = cfg.gamma ** (1 / total_steps)
        fn = lambda s: exponential(s, lr, per_step)  # noqa: E731
    elif name == "cosine":
        fn = lambda s: cosine(s, lr, total_steps, warmup_steps, min_lr)  # noqa: E731
    elif name == "linear":
        fn = lambda s: linear(s, lr, total_steps, warmup_steps, min_lr)  # noqa: E731
    elif name == "inverse_sqrt":
        w = max(1, warmup_steps)
        scale = lr / inverse_sqrt(w - 1, 1, w)
        fn = lambda s: scale * inverse_sqrt(s, 1, w)  # noqa: E731
    elif name == "onecycle":
        fn = lambda s: onecycle(s, lr, total_steps, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)  # noqa: E731
    else:
        raise ValueError(f"unknown schedule {name!r}")
    if warmup_steps and name in ("constant", "step", "multistep", "exponential"):
        base = fn
        fn = lambda s: _warmup(s, lr, warmup_steps) if s < warmup_steps else base(s - warmup_steps)  # noqa: E731
    return fn
