"""What a training method plugs into the shared loop: hooks with defaults, in the style of
detectron2's ``HookBase``, mmengine's ``Hook`` and Lightning's manual optimisation.

``train_loop`` calls, for every optimiser step::

    dataset(base, ctx)                 when it (re)builds a data loader: the data to train on
    training_step(net, batch, ctx)     once per micro-batch; returns {"loss": ..., other scalars}
    (default optimisation)             zero_grad, backward of loss / accumulation, step, schedule
    after_step(model, ctx)             EMA, target networks, counters
    on_every_n_steps(model, ctx)       every ``every_n_steps`` steps (0 = never), after after_step;
                                       may change what ``dataset`` returns from the next step on
    on_train_end(model, ctx)           once, after the last step (also when resuming a finished
                                       run): final plots and tables into ``ctx.output_dir``
    state_dict() / load_state_dict()   saved in every checkpoint, restored on resume

A method with ``manual_optimization = True`` runs its own backward and optimiser steps inside
``training_step`` (actor-critic, GAN): it calls ``ctx.backward(loss)``, which keeps the loop's
non-finite guard in front of every backward, and steps the optimisers of ``ctx.optimizers``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from stages.runtime.distributed import DistContext, all_reduce_sum
from stages.runtime.optim import build_optimizer, poly_schedule
from stages.runtime.settings import TrainSettings


@dataclass
class Optimization:
    """One optimiser and its schedule; the checkpoint keeps both, in the order the method gave them."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


class NonFiniteStep(Exception):
    """A loss was NaN or infinite on some process; the loop skips or stops (``on_nonfinite``)."""

    def __init__(self, terms: dict[str, float]) -> None:
        super().__init__(terms)
        self.terms = terms


@dataclass
class StepContext:
    """What a hook knows about the run: where it is, the process group, its folders."""

    step: int  # optimiser steps completed before this one
    total_steps: int
    dist: DistContext
    optimizers: list[Optimization]
    state_dir: Path | None = None  # kept across kills; the method's files that resume needs
    output_dir: Path | None = None  # what the method shows the user (report, inspection)
    accumulation: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def backward(self, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None) -> None:
        """``loss.backward()`` after checking, on every process, that it is finite."""
        check_finite(loss, terms or {"loss": loss}, self.dist)
        loss.backward()


def check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], ctx: DistContext) -> None:
    """Raise ``NonFiniteStep`` on every process when the loss is not finite on any of them."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()) else 1.0], device=ctx.device)
    if all_reduce_sum(bad, ctx).item() > 0:
        raise NonFiniteStep({k: float(v.detach()) for k, v in terms.items()})


class TrainHooks:
    """Defaults for every hook: one optimiser over ``model.param_groups`` with a poly schedule,
    the loop's own backward and step, no state, no callbacks."""

    manual_optimization: ClassVar[bool] = False
    # A head idle for some steps (a warm-up) leaves parameters without gradients, which DDP
    # refuses unless told to look for them (at some cost per step).
    find_unused_parameters: ClassVar[bool] = False
    every_n_steps: int = 0

    def configure_optimizers(self, model: nn.Module, settings: TrainSettings) -> list[Optimization]:
        optimizer = build_optimizer(settings.optimizer, model.param_groups(settings.head_lr_mult),
                                    settings.lr, settings.weight_decay)
        return [Optimization(optimizer, poly_schedule(optimizer, settings.steps))]

    def dataset(self, base: Dataset, ctx: StepContext) -> Dataset:
        """The data from this step on (same length as ``base``; its labels may change)."""
        return base

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        pass

    def on_every_n_steps(self, model: nn.Module, ctx: StepContext) -> None:
        pass

    def on_train_end(self, model: nn.Module, ctx: StepContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
