"""``ce``: the baseline every other method is compared with -- plain cross-entropy on pseudo labels.

Two options go beyond plain CE, for noisy labels (both off by default; docs/real-images.md has
what they gave on voc-aug):

- ``forget_rate`` drops, within each label class of a batch, that share of its labelled pixels
  with the highest loss (the small-loss selection of Co-teaching, Han et al. 2018, in one network
  and per class), ramped in linearly over the first ``forget_ramp`` of training so that the
  network first learns the pattern the labels agree on. Per class, because the foreground's
  losses are higher than the background's: one quota over all pixels would drop mostly
  foreground and teach the network to say "background".
- ``class_balance`` weights each labelled pixel by its class's share of the batch's labelled
  pixels to the power ``-class_balance`` (0.5: inverse square root), the weights normalised to
  mean 1 so that only the balance changes, not the step size. On voc-aug a segmenter predicts
  less foreground than its pseudo labels hold (docs/real-images.md); this counters the pull of the majority
  class.
"""
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


def small_loss_cross_entropy(logits: torch.Tensor, label: torch.Tensor, forget: float,
                             balance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean CE over the labelled pixels kept when each class drops its ``forget`` share
    of highest-loss pixels, each class weighted by its share of the kept pixels to the power
    ``-balance`` (mean weight 1); also returns the kept pixels' mask."""
    per_pixel = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="none")
    keep = label != IGNORE
    classes = torch.unique(label[keep])
    if forget > 0:
        losses = per_pixel.detach()
        for c in classes:
            members = label == c
            drop = int(forget * int(members.sum()))
            if drop:
                cut = torch.topk(losses[members], drop).values[-1]
                keep &= ~(members & (losses >= cut))
    weight = keep.float()
    if balance > 0 and keep.any():
        counts = torch.bincount(label[keep]).float()
        per_class = counts.clamp(min=1) ** -balance
        weight = weight * per_class[torch.where(keep, label, 0)]
        weight = weight * keep.sum() / weight.sum()
    return (per_pixel * weight).sum() / keep.sum().clamp(min=1), keep


@dataclass
class CrossEntropy(Method):
    """Options: ``forget_rate``, ``forget_ramp`` and ``class_balance``; all at their defaults it
    is plain CE, the reference point."""

    name: ClassVar[str] = "ce"
    needs: ClassVar[frozenset[str]] = frozenset({"pseudo_labels"})

    forget_rate: float = 0.0
    forget_ramp: float = 0.3
    class_balance: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.forget_rate < 1:
            raise ValueError(f"ce: forget_rate must be in [0, 1), got {self.forget_rate}")
        if not 0 <= self.forget_ramp <= 1:
            raise ValueError(f"ce: forget_ramp must be in [0, 1], got {self.forget_ramp}")
        if self.class_balance < 0:
            raise ValueError(f"ce: class_balance must be >= 0, got {self.class_balance}")

    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        return Segmenter(spec)

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        ids = inputs.index.ids(inputs.split)
        return SegmentationDataset(inputs.index, inputs.split,
                                   label_dir_source(inputs.pseudo_labels, ids), aug, seed)

    def forget_at(self, step: int, total_steps: int) -> float:
        """The share dropped at ``step``: 0 at the start, ``forget_rate`` after the ramp."""
        ramp_steps = self.forget_ramp * total_steps
        return self.forget_rate * (min(1.0, step / ramp_steps) if ramp_steps else 1.0)

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = net(batch["image"])
        if not (self.forget_rate or self.class_balance):
            return {"loss": masked_cross_entropy(logits, batch["label"])}
        forget = self.forget_at(ctx.step, ctx.total_steps)
        loss, _ = small_loss_cross_entropy(logits, batch["label"], forget, self.class_balance)
        return {"loss": loss, "forget": torch.tensor(forget, device=loss.device)}
