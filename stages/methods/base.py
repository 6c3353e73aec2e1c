"""The method interface: what a segmenter training method provides (the registry lists them by name).

A method is one module with a class that says what it reads from the shared cache (``needs``),
which model it trains, which dataset feeds it and what one training step computes. The loop,
devices, checkpoints and DDP stay in stages.runtime.trainer, so a new method is only its own idea.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from stages.data.index import DatasetIndex
from stages.data.transforms import AugmentConfig
from stages.models.segmenter import SegmenterSpec

# What a method may ask of the cache; the workflow checks a variant's needs against these.
CACHE_ITEMS = frozenset({"pseudo_labels", "scribbles", "cam_checkpoint"})


@dataclass(frozen=True)
class TrainInputs:
    """The data set and the cache artifacts train_seg was given; a method reads what it needs."""

    index: DatasetIndex
    split: str
    pseudo_labels: Path | None = None
    cam_checkpoint: Path | None = None


class Method(Protocol):
    """A method's options are the fields of its (dataclass) implementation.

    ``build_model`` returns a module with ``.backbone`` (timm features model),
    ``param_groups(head_lr_mult)`` and a forward that maps images to per-pixel logits at input
    size -- that forward is all evaluation uses, so training-only heads stay internal.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]

    def build_model(self, spec: SegmenterSpec) -> nn.Module: ...

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset: ...

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
