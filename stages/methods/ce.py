"""``ce``: the baseline every other method is compared with -- plain cross-entropy on pseudo labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.transforms import AugmentConfig
from stages.io.label_png import IGNORE
from stages.methods.base import Method, TrainInputs
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.hooks import StepContext


def masked_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean CE over labelled pixels; zero (still differentiable) when a crop has none.

    A crop that lands wholly in the ignore band or padding would otherwise give 0/0 = NaN.
    """
    total = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="sum")
    return total / (label != IGNORE).sum().clamp(min=1)


@dataclass
class CrossEntropy(Method):
    """No options: the method is the reference point."""

    name: ClassVar[str] = "ce"
    needs: ClassVar[frozenset[str]] = frozenset({"pseudo_labels"})

    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        return Segmenter(spec)

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        ids = inputs.index.ids(inputs.split)
        return SegmentationDataset(inputs.index, inputs.split,
                                   label_dir_source(inputs.pseudo_labels, ids), aug, seed)

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": masked_cross_entropy(net(batch["image"]), batch["label"])}
