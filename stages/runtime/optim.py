"""Optimisers and the poly schedule used by every trainer here."""
from __future__ import annotations

from typing import Iterable

import torch

from stages.errors import InputError


def build_optimizer(name: str, param_groups: Iterable[dict], lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """``param_groups`` may carry an ``lr_mult`` (e.g. x10 for heads); it scales the base lr."""
    groups = []
    for g in param_groups:
        g = dict(g)
        g["lr"] = lr * g.pop("lr_mult", 1.0)
        groups.append(g)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise InputError(f"unknown optimizer {name!r} (use sgd or adamw)")


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                  power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power)
