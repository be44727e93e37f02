"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW, RMSProp; PyTorch's default, foreach or fused kernels.

Weight decay goes only to weights that multiply inputs (conv, linear, embedding);
biases and normalisation parameters (BatchNorm/LayerNorm/GroupNorm gains and shifts)
are excluded, as is standard since Goyal et al. 2017 and the AdamW paper.
"""

from __future__ import annotations

import torch
from torch import nn

from components.config import OptimizerConfig

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases + norm parameters without decay."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORMS) or name.endswith("bias") or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build(model: nn.Module, cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer named in ``cfg``; its lr is overwritten every step by the schedule."""
    groups = param_groups(model, cfg.weight_decay)
    impl = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.implementation]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    if cfg.name == "adam":
        # Adam's weight_decay is L2 added to the gradient (coupled); AdamW decouples it.
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, **impl)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
