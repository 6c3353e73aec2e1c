"""The affinity network's training step: AffinityNet's balanced loss on the labelled pairs.

Each step takes augmented crops of the training images with their confident-region labels
(``stages.data.segmentation.SegmentationDataset``; crop padding is unknown), brings the labels to
the embedding grid by nearest-neighbour sampling (as IRN does at stride 4), and uses every
labelled pair of the radius in those crops: the random crops are the sample of pairs. The loss
(AffinityNet's code) averages each group apart and weights them 1/4, 1/4, 1/2, so the rare
foreground pairs weigh as much as the plentiful background ones:

    L = 1/4 mean_bg-pos(-log a) + 1/4 mean_fg-pos(-log a) + 1/2 mean_neg(-log(1 - a))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.irn.labels import PairLabels, pair_labels
from stages.irn.net import pair_affinities
from stages.irn.pairs import Offset
from stages.runtime.hooks import StepContext, TrainHooks

_EPS = 1e-5  # AffinityNet's, inside the logs and the group counts


def grid_labels(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels sampled (nearest) onto the (h, w) embedding grid."""
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()


def affinity_loss(affinity: torch.Tensor, pairs: PairLabels) -> dict[str, torch.Tensor]:
    """The balanced loss and its terms; a group without pairs in the batch contributes 0."""
    def mean_over(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return (values * mask).sum() / (mask.sum() + _EPS)

    terms = {"bg_pos": mean_over(pairs.bg_pos, -torch.log(affinity + _EPS)),
             "fg_pos": mean_over(pairs.fg_pos, -torch.log(affinity + _EPS)),
             "neg": mean_over(pairs.neg, -torch.log(1 + _EPS - affinity))}
    terms["loss"] = terms["bg_pos"] / 4 + terms["fg_pos"] / 4 + terms["neg"] / 2
    return terms


@dataclass(frozen=True)
class AffinityStep(TrainHooks):
    """The step on a batch {"image", "label"}; the pair counts go into the metrics beside the loss."""

    offsets: tuple[Offset, ...]

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        embeddings = net(batch["image"]).float()
        pairs = pair_labels(grid_labels(batch["label"], embeddings.shape[-2:]), self.offsets)
        terms = affinity_loss(pair_affinities(embeddings, self.offsets), pairs)
        counts = {f"{name}_pairs": getattr(pairs, name).sum().float() for name in ("bg_pos", "fg_pos", "neg")}
        return {**terms, **counts}
