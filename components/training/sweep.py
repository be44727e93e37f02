"""A learning-rate-schedule sweep as synchronous successive halving: the same winner at any concurrency.

Trials are drawn once, from ``tune.<algo>.seed``: trial ``t00`` is ``train.<algo>``'s own
schedule, peak LR and warm-up (the baseline every sweep is measured against), then
``samples_per_schedule`` draws for each schedule of the space (peak LR log-uniform, warm-up
from its choices). Every trial's schedule spans ``epochs`` (the sweep's ``max_t``).

Rungs are at ``grace_period * reduction_factor**k`` epochs, and at ``epochs``. Every live trial
trains to the rung (resuming from its run directory's last checkpoint, which continues bit for
bit); only when all have reached it are they ranked by the family's val metric (ties by val
loss, then by trial name) and the best ``max(1, n // reduction_factor)`` go on. Decisions see
whole rungs, never which trial reported first, so the winner depends on params and data only.
A single survivor trains straight to ``epochs``. ``t00``, when a rung cuts it, goes on as the
sweep's **control**: it trains to ``epochs`` beside the survivors (one more trial at full budget)
but no longer competes, so what the sweep bought is measured at the final budget, not at the
rung where params.yaml's own config happened to be cut. This is successive halving (one bracket of
HyperBand, Li et al. 2018) run rung by rung; ASHA's asynchronous promotions decide on
whichever trials happen to have finished, which is what made earlier sweeps irreproducible.

This module is the decision logic; how a rung runs (Ray Tune trials) is the caller's
``run_rung``. ``pipelines/tune.py`` runs it, ``benchmarks/bench_sweep.py`` compares it with a grid.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.config import TrainConfig, with_schedule

COMPLETED, STOPPED, FAILED = "completed", "early-stopped", "failed"
CONTROL = "control"  # t00 cut by a rung, carried to the last one out of the competition


@dataclass(frozen=True)
class Trial:
    """One point of the search space, named ``tNN`` in draw order."""
    name: str
    schedule: str
    lr: float
    warmup: float

    def overrides(self) -> dict[str, Any]:
        """What this trial changes in ``train.<algo>`` (and what ``best.yaml`` holds for the winner)."""
        return {"lr": self.lr, "schedule": {"name": self.schedule, "warmup": self.warmup}}

    def apply(self, train: TrainConfig) -> TrainConfig:
        """``train`` with this trial's schedule, peak LR and warm-up (a new config; ``train`` is unchanged)."""
        return with_schedule(train, "trial", self.lr, self.schedule, self.warmup)


def draw(space: Any, base: TrainConfig, samples_per_schedule: int, seed: int) -> list[Trial]:
    """The sweep's trials: the base config first, then ``samples_per_schedule`` per schedule.

    ``inverse_sqrt`` has no meaning without a warm-up, so it draws from the non-zero warm-up
    choices (``SearchSpace.validate`` makes sure there is one).
    """
    rng = random.Random(seed)
    trials = [Trial("t00", base.schedule.name, float(base.lr), float(base.schedule.warmup))]
    lo, hi = math.log(space.lr[0]), math.log(space.lr[1])
    for _ in range(samples_per_schedule):
        for schedule in space.schedule:
            warmups = [w for w in space.warmup if w > 0] if schedule == "inverse_sqrt" else list(space.warmup)
            lr = math.exp(rng.uniform(lo, hi))
            warmup = warmups[rng.randrange(len(warmups))]
            trials.append(Trial(f"t{len(trials):02d}", schedule, float(f"{lr:.4g}"), float(warmup)))
    return trials


def rungs(grace_period: int, reduction_factor: int, epochs: int) -> list[int]:
    """Epochs at which the live trials are compared: grace, grace*eta, ... below ``epochs``, then ``epochs``."""
    out, r = [], grace_period
    while r < epochs:
        out.append(r)
        r *= reduction_factor
    return [*out, epochs]


def keep(n: int, reduction_factor: int) -> int:
    """How many of ``n`` ranked trials go on to the next rung."""
    return max(1, n // reduction_factor)


def plan(n: int, grace_period: int, reduction_factor: int, epochs: int) -> list[tuple[int, int]]:
    """(rung epochs, live trials) of a sweep of ``n`` trials with no failures; the epochs it costs is
    ``sum((e - previous_e) * live)``."""
    out, live = [], n
    for r in rungs(grace_period, reduction_factor, epochs):
        if out and live == 1:
            r = epochs  # a single survivor goes straight to the last rung
        out.append((r, live))
        if r == epochs:
            break
        live = keep(live, reduction_factor)
    return out


def epochs_spent(steps: Sequence[tuple[int, int]]) -> int:
    total, before = 0, 0
    for r, live in steps:
        total += (r - before) * live
        before = r
    return total


@dataclass
class Outcome:
    """What became of one trial: its metrics at each rung it reached, its status and where it stopped."""
    trial: Trial
    at: dict[int, dict[str, float]] = field(default_factory=dict)  # rung epochs -> that epoch's metrics
    status: str = COMPLETED
    error: str = ""

    @property
    def epochs(self) -> int:
        return max(self.at, default=0)


@dataclass
class Sweep:
    """The result: every trial's outcome (in trial order), the rungs run, and the winner."""
    outcomes: list[Outcome]
    steps: list[tuple[int, int]]  # (rung epochs, trials run to it)
    winner: Outcome
    metric: str
    mode: str

    @property
    def epochs_spent(self) -> int:
        return epochs_spent(self.steps)

    def baseline(self) -> Outcome:
        return self.outcomes[0]

    def gain(self) -> dict[str, Any]:
        """The winner against the baseline (``t00``, params.yaml's own config) at the same budget:
        the last rung both reached, on val (the final one, unless the baseline failed)."""
        base = self.baseline()
        common = max((r for r in base.at if r in self.winner.at), default=0)
        if not common:
            return {"epochs": 0, "baseline": float("nan"), "winner": self.winner.at[self.winner.epochs][self.metric]}
        return {"epochs": common, "baseline": base.at[common][self.metric], "winner": self.winner.at[common][self.metric]}


def ranked(outcomes: Sequence[Outcome], epochs: int, metric: str, mode: str) -> list[Outcome]:
    """Best first by ``metric`` at rung ``epochs`` (ties: lower val loss, then trial name); a trial
    without a finite metric there ranks last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(o: Outcome) -> tuple:
        m = o.at.get(epochs, {})
        value, loss = m.get(metric, math.nan), m.get("val_loss", math.nan)
        finite = math.isfinite(value)
        return (not finite, sign * value if finite else 0.0, loss if math.isfinite(loss) else math.inf, o.trial.name)

    return sorted(outcomes, key=key)


RunRung = Callable[[list[Trial], int], dict[str, "dict[str, float] | BaseException"]]


def successive_halving(trials: Sequence[Trial], run_rung: RunRung, *, grace_period: int, reduction_factor: int,
                       epochs: int, metric: str, mode: str,
                       on_rung: Callable[[int, list[Outcome], list[Outcome]], None] | None = None,
                       control: bool = True) -> Sweep:
    """Run the sweep. ``run_rung(trials, e)`` trains each trial to epoch ``e`` (resuming where it
    stopped) and returns, by trial name, its metrics at epoch ``e`` or the exception it failed with.
    ``on_rung(e, kept, stopped)`` hears each decision (the first trial, cut and going on as the
    control, is among ``stopped`` with the status CONTROL).
    With ``control``, the first trial (params.yaml's own config) goes on to ``epochs`` when a rung
    cuts it, out of the competition. Raises RuntimeError when every competing trial failed."""
    outcomes = [Outcome(t) for t in trials]
    base = outcomes[0]
    live, steps = list(outcomes), []
    for r in rungs(grace_period, reduction_factor, epochs):
        if steps and sum(o.status != CONTROL for o in live) == 1:
            r = epochs  # nothing left to compare: the survivor (and the control) train to the end
        results = run_rung([o.trial for o in live], r)
        steps.append((r, len(live)))
        for o in live:
            got = results.get(o.trial.name)
            if isinstance(got, BaseException) or got is None:
                o.status, o.error = FAILED, str(got or "no result").splitlines()[0][:300]
            elif not math.isfinite(got.get(metric, math.nan)):
                o.status, o.error = FAILED, f"{metric} is {got.get(metric)} at epoch {r}"
                o.at[r] = got
            else:
                o.at[r] = got
        competing = [o for o in live if o.status not in (FAILED, CONTROL)]
        if not competing:
            first = next((o.error for o in live if o.status == FAILED), "")
            raise RuntimeError(f"every trial of the rung at {r} epochs failed; first error: {first}")
        order = ranked(competing, r, metric, mode)
        if r == epochs:
            for o in order:
                o.status = COMPLETED
            if on_rung:
                on_rung(r, order, [])
            return Sweep(outcomes, steps, order[0], metric, mode)
        kept, stopped = order[:keep(len(order), reduction_factor)], order[keep(len(order), reduction_factor):]
        for o in stopped:
            o.status = STOPPED
        if control and base in stopped:  # params.yaml's own config: measured at the final budget
            base.status = CONTROL
        if on_rung:
            on_rung(r, kept, stopped)
        chosen = {id(o) for o in kept}
        live = [o for o in outcomes if id(o) in chosen or (o is base and o.status == CONTROL)]  # trial order
    raise AssertionError("unreachable: the last rung is at `epochs`")
