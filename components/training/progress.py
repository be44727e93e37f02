"""Progress of long work, for a person at a terminal and for a CI log.

At an interactive terminal a bar redraws in place (steps of the epoch, steps/s, ETA of the
run). Where nobody watches a terminal (``CI`` set, output piped or in a Ray worker) it
prints one plain line every ``every_s`` seconds instead, so logs stay short; the summary
line per epoch is printed in both cases.
"""

from __future__ import annotations

import os
import sys
import time


def interactive(stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("CI", "").lower() not in ("1", "true")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Training-loop hook (rank 0): per-step bar or periodic lines, and one line per epoch."""

    all_ranks = False

    def __init__(self, epochs: int, val_metric: str = "val_accuracy", *, every_s: float = 30.0, stream=None,
                 tty: bool | None = None):
        self.epochs, self.val_metric, self.every_s = epochs, val_metric, every_s
        self.total_steps: int | None = None
        # The hook travels to Ray Train workers (pickled): it keeps no handle on the driver's
        # stdout, and decides bar or lines where it prints.
        self._stream, self._tty = stream, tty
        self.t0: float | None = None
        self.steps = 0  # steps taken in this process (a resumed run counts from its restart)
        self._last = 0.0

    @property
    def stream(self):
        return self._stream or sys.stdout

    @property
    def tty(self) -> bool:
        if self._tty is None:
            self._tty = interactive(self.stream)
        return self._tty

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stream": None if self._stream in (None, sys.stdout, sys.stderr) else self._stream}

    def _print(self, text: str, end: str = "\n") -> None:
        self.stream.write(text + end)
        self.stream.flush()

    def on_batch(self, epoch: int, done: int, total: int, step: int, total_steps: int) -> None:
        """After each step: ``done`` of ``total`` steps in this epoch, ``step`` of ``total_steps`` in the run."""
        now = time.perf_counter()
        self.total_steps = total_steps
        if self.t0 is None:
            self.t0, self._last = now, now
        self.steps += 1
        rate = self.steps / max(now - self.t0, 1e-9)
        eta = _duration(max(total_steps - step, 0) / max(rate, 1e-9))
        if self.tty:
            if now - self._last >= 0.2 or done == total:
                width = 24
                bar = "#" * (width * done // max(total, 1))
                self._print(f"\r  epoch {epoch + 1}/{self.epochs} [{bar:<{width}}] {done}/{total} "
                            f"{rate:.1f} steps/s, eta {eta}  ", end="")
                self._last = now
        elif now - self._last >= self.every_s:
            self._print(f"  epoch {epoch + 1}/{self.epochs}: step {done}/{total} ({100 * done // max(total, 1)}%), "
                        f"{rate:.1f} steps/s, eta {eta}")
            self._last = now

    def on_step(self, rows: list[dict]) -> None:
        pass

    def on_epoch(self, metrics: dict[str, float], checkpoint_dir) -> None:
        now = time.perf_counter()
        self.t0 = self.t0 or now - metrics["epoch_time_s"]
        done = metrics["epoch"] + 1
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                          if k in ("train_loss", "val_loss", self.val_metric, "lr", "samples_per_s"))
        if self.total_steps and self.steps:
            rate = self.steps / max(now - self.t0, 1e-9)
            eta = _duration((self.total_steps - metrics["step"]) / max(rate, 1e-9))
        else:
            eta = _duration((now - self.t0) / max(done, 1) * (self.epochs - done))
        self._print(("\r\033[K" if self.tty else "") + f"  epoch {done}/{self.epochs}: {shown}; eta {eta}")
