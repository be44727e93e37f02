"""What one optimisation step does: the default ``SupervisedStep``, and the contract a family's
own ``Step`` follows (the GAN's two optimizers, diffusion's EMA). Kept apart from the loop so
that family modules can build on it without importing the loop (which imports the families).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from components.training import optim, schedules


@dataclass
class StepResult:
    """What one optimisation step gives the loop, every value still on the device: the loop
    adds ``loss``, ``correct`` and ``count`` into the epoch's sums and reads ``log`` every
    ``log_every`` steps (a read waits for the GPU, so a step reads nothing itself)."""

    loss: torch.Tensor  # the batch's mean loss (detached)
    count: torch.Tensor | int  # what the mean is over: samples, or tokens of a sentence batch
    correct: torch.Tensor | None = None  # correct predictions (classifiers): the epoch's train_accuracy
    log: dict[str, Any] = field(default_factory=dict)  # lr and scalars of the step rows (floats or 0-d tensors)


class SupervisedStep:
    """One optimizer and one LR schedule over ``family.training_step``'s loss; DDP through Ray Train.

    The contract a family's own ``Step`` follows:
    ``Step(model, cfg: TrainConfig, family, total_steps, autocast)``, ``distribute(world_size)``
    (after resume), ``__call__(batch, step) -> StepResult``
    (forward passes inside ``autocast()``, backward outside; nothing read from the device:
    no ``.item()``, ``float()`` or ``if`` on a tensor), ``state_dict()`` /
    ``load_state_dict()`` (everything a resume needs but the weights).

    ``family.training_step(model, batch, cfg, label_smoothing=, progress=)`` returns ``loss``,
    ``count`` and optionally ``correct`` and ``log`` (more scalars for the step rows);
    ``progress`` is the fraction of the run done (a KL warm-up reads it).
    """

    def __init__(self, model: nn.Module, cfg: Any, family: Any, total_steps: int,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model, self.cfg, self.family, self.autocast = model, cfg, family, autocast
        self.core = model  # ``self.model`` may become a DDP wrapper; this stays the module
        self.total_steps = total_steps
        self.optimizer = optim.build(model, cfg.optimizer, cfg.lr)
        self.lr_at = schedules.build(cfg.schedule, cfg.lr, total_steps)

    def distribute(self, world_size: int) -> None:
        if world_size > 1:
            import ray.train.torch
            self.model = ray.train.torch.prepare_model(self.model, move_to_device=False)

    def __call__(self, batch: tuple, step: int) -> StepResult:
        lr = self.lr_at(step)
        optim.set_lr(self.optimizer, lr)
        with self.autocast():
            out = self.family.training_step(self.model, batch, self.cfg.model, label_smoothing=self.cfg.label_smoothing,
                                            progress=step / self.total_steps)
        loss = out["loss"]
        # Log values stay tensors: the loop reads them every log_every steps, not every step
        # (a read waits for the GPU). A non-finite loss is found there; the run stops then.
        log = {"lr": lr, "loss": loss.detach(), **out.get("log", {})}  # a family may add scalars (a KL term...)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            log["grad_norm"] = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        correct = out.get("correct")
        if correct is not None:
            log["accuracy"] = correct.double() / torch.as_tensor(out["count"]).clamp(min=1)
        return StepResult(loss.detach(), out["count"], correct, log)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
