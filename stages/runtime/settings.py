"""The training settings every trainer takes: one definition for flags, loop, augmentation and meta.

``TrainSettings`` mirrors the config schema's ``$defs/train`` block key for key, default for
default (tests/test_train_settings.py keeps the two equal). The command-line flags are made from
its annotations, the loop and the datasets read it, and ``meta`` derives from it what a checkpoint
records, so a new training setting is one field here and one key in the schema.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from stages.errors import InputError
from stages.runtime.distributed import add_device_arguments

# Settings that change how a run is carried out, not what it computes: resuming across a change
# of these is safe, so they stay out of the checkpoint meta.
OPERATIONAL = frozenset({"checkpoint_every", "num_workers", "on_nonfinite", "max_skipped"})


@dataclass(frozen=True)
class TrainSettings:
    crop_size: int = 128
    scale_range: tuple[float, float] = (0.7, 1.3)
    color_jitter: float = 0.3
    batch_size: int = 16  # per process and per micro-batch
    effective_batch_size: int | None = None  # None: batch_size x processes, no accumulation
    steps: int = 300  # optimiser steps
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    head_lr_mult: float = 10.0
    weight_decay: float = 0.0001
    checkpoint_every: int = 100
    seed: int = 0
    class_balance: float = 0.0  # repeat-factor threshold (stages.runtime.sampling); 0 = off
    num_workers: int = 0
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped: int = 10

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimiser step, so that the effective batch is the same on any number
        of processes (one GPU reproduces a two-GPU recipe)."""
        per_step = self.batch_size * world_size
        if self.effective_batch_size is None:
            return 1
        if self.effective_batch_size % per_step:
            raise InputError(
                f"train.effective_batch_size {self.effective_batch_size} is not a multiple of "
                f"train.batch_size {self.batch_size} x {world_size} process(es); change either key")
        return self.effective_batch_size // per_step

    def meta(self, world_size: int) -> dict[str, Any]:
        """What shapes the result, as plain JSON values; a checkpoint whose meta differs is not resumed."""
        shaping = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in OPERATIONAL}
        shaping["scale_range"] = list(self.scale_range)
        return {**shaping, "world_size": world_size, "accumulation": self.accumulation(world_size)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainSettings`` field (``--crop-size`` ...), plus ``--device``.

    Flags with a default in the dataclass but none in the schema (``effective_batch_size``) are
    optional; the others are required because the workflow always passes the schema's values.
    """
    g = parser.add_argument_group("training (the config's train block)")
    for field in dataclasses.fields(TrainSettings):
        kind = typing.get_type_hints(TrainSettings)[field.name]
        options: dict[str, Any] = {"required": field.default is not None}
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is tuple:
            options.update(type=args[0], nargs=len(args))
        elif origin is Literal:
            options.update(choices=args)
        elif type(None) in args:  # optional: int | None
            options.update(type=next(a for a in args if a is not type(None)), default=None)
        else:
            options.update(type=kind)
        g.add_argument(_flag(field.name), **options)
    add_device_arguments(g)


def training_argv(settings: TrainSettings) -> list[str]:
    """The flags of ``add_training_arguments`` that give ``settings`` back (fields left at None are
    left out): for scripts that start a stage outside the workflow."""
    argv: list[str] = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is not None:
            argv += [_flag(field.name), *(str(v) for v in (value if isinstance(value, tuple) else [value]))]
    return argv


def settings_from(args: argparse.Namespace) -> TrainSettings:
    """The ``TrainSettings`` that ``add_training_arguments``' flags hold."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    values["scale_range"] = tuple(values["scale_range"])
    return TrainSettings(**values)
