"""An epoch's training sums and step rows, kept on the device and read every ``log_every`` steps.

Reading a value of a CUDA tensor (``.item()``, ``float()``, ``torch.isfinite(x)`` in an ``if``)
waits for every kernel queued before it: one read per step keeps the GPU waiting for the host
at every step. The meter adds each step's loss, correct predictions and count into tensors on
the device and counts the non-finite losses there too; it reads them (one copy to the host) only
at a logged step and at the end of the epoch. A loss that turns NaN or infinite is therefore
found at most ``log_every`` steps after it appears, and the run stops, naming that step range.
On a CPU the reads cost what ``.item()`` did; results are the same float64 sums as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from components.training.steps import StepResult


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops and nothing from it is registered."""


class StepMeter:
    """Per-epoch sums on ``device``; ``add`` every step, ``row`` at logged steps, ``totals`` at the end.

    ``name`` starts a divergence message and ``hint`` ends it: what to change in params.yaml.
    """

    def __init__(self, device: torch.device, name: str, hint: str):
        self.device, self.name, self.hint = device, name, hint
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x count, correct, count
        self.bad = torch.zeros((), dtype=torch.int64, device=device)  # steps with a non-finite loss
        self.checked = 0  # every step up to this one is known finite
        self.has_correct = False

    def add(self, out: StepResult) -> None:
        """Add one step's ``loss`` (a mean over ``count``), ``count`` and ``correct``: no host sync."""
        loss, count, correct = out.loss.detach(), out.count, out.correct
        self.has_correct |= correct is not None
        # Three tiny kernels; a count or correct still on the host is a scalar operand, not a copy.
        self.sums[0] += loss.double() * count
        self.sums[1] += correct if correct is not None else 0
        self.sums[2] += count
        self.bad += ~torch.isfinite(loss)

    def row(self, step: int, epoch: int, log: dict[str, Any]) -> dict[str, float]:
        """Read the step's log values (one copy) and check every step since the last read."""
        names = [k for k, v in log.items() if isinstance(v, torch.Tensor)]
        values = self._read([log[k] for k in names] + [self.bad])
        row = {"step": step, "epoch": epoch, **{k: float(v) for k, v in log.items() if k not in names},
               **dict(zip(names, values[:-1]))}
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        if values[-1] > 0 or bad:
            what = ", ".join(f"{k} became {v}" for k, v in bad.items()) or "the loss became nan or inf"
            self._diverged(what, step, epoch, log)
        self.checked = step
        return row

    def totals(self, step: int, epoch: int, log: dict[str, Any]) -> torch.Tensor:
        """The epoch's (loss x count, correct, count) sums as float64 on the device, checked finite."""
        if int(self.bad) > 0:
            self._diverged("the loss became nan or inf", step, epoch, log)
        self.checked = step
        return self.sums

    def _read(self, values: list) -> list[float]:
        return torch.stack([torch.as_tensor(v).to(self.device, torch.float64).reshape(())
                            for v in values]).tolist()

    def _diverged(self, what: str, step: int, epoch: int, log: dict[str, Any]) -> None:
        lr = log.get("lr", float("nan"))
        where = f"at step {step}" if self.checked + 1 == step else f"between steps {self.checked + 1} and {step}"
        raise TrainingDiverged(f"{self.name}: {what} {where} (epoch {epoch}, "
                               f"lr {float(lr):.4g} at step {step}); {self.hint}; nothing was registered")
