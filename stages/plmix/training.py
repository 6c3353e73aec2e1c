"""One PL-Mix round's training: pseudo-labelled crops, pairwise mix-up in the batch, the step.

Pairing: the trainer's sampler already shuffles the data set every epoch, so each crop is pasted
onto the next crop of its batch (the last onto the first); every image is a source once and a
partner once. All randomness (crop, flip, jitter, paste angle and scale) is drawn in the
dataset from ``epoch_rng(seed, epoch, index)``, so a resumed round replays the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.data.index import DatasetIndex
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.tensors import to_tensor
from stages.data.transforms import AugmentConfig, augment, epoch_rng
from stages.models.cam_net import CAMNet
from stages.plmix.losses import class_logits, continuity_loss, focal_loss, soft_iou_and_dice_losses
from stages.plmix.paste import PasteSettings, mixed_classes, paste, rotate_rescale
from stages.runtime.hooks import StepContext, TrainHooks


def pooled_logits(net: CAMNet, maps: torch.Tensor) -> torch.Tensor:
    """Image logits from class maps, pooled as ``CAMNet.forward`` pools them (a test keeps the
    two in step)."""
    return maps.mean(dim=(2, 3)) if net.pooling == "gap" else maps.amax(dim=(2, 3))


class CamsAndLogits(nn.Module):
    """The CAM network seen by the trainer: one forward gives both the maps and the logits.

    One forward matters under DDP: a second pass outside the wrapper would add gradients the
    reducer does not expect.
    """

    def __init__(self, cam_net: CAMNet) -> None:
        super().__init__()
        self.cam_net = cam_net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.cam_net.cams(x)
        return maps, pooled_logits(self.cam_net, maps)

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        return self.cam_net.param_groups(head_lr_mult)


class PseudoLabelledCrops(SegmentationDataset):
    """Augmented crops of images with their round's pseudo labels, plus each source's paste
    geometry; ``MixCollate`` turns a list of them into a batch of mixed images."""

    def __init__(self, index: DatasetIndex, split: str, labels_dir: Path, aug: AugmentConfig,
                 paste_settings: PasteSettings, seed: int) -> None:
        super().__init__(index, split, label_dir_source(labels_dir, index.ids(split)), aug, seed)
        self.paste_settings = paste_settings

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.load_pair(i)
        rng = epoch_rng(self.seed, self.epoch, i)
        image, label = augment(image, label, self.aug, rng)
        return {"image": image, "label": label, "classes": list(self.index.labels[self.ids[i]]),
                "geometry": self.paste_settings.draw(rng)}


@dataclass(frozen=True)
class MixCollate:
    """Mix each crop of a batch onto the next one: {"image", "label", "labels" (multi-hot)}.

    A class rather than a closure so that DataLoader worker processes can pickle it.
    """

    num_classes: int  # including background

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images, labels = [], []
        multi_hot = torch.zeros(len(items), self.num_classes - 1)
        for j, src in enumerate(items):
            dst = items[(j + 1) % len(items)]
            src_image, src_label = src["image"], src["label"]
            if src["geometry"] is not None:
                src_image, src_label = rotate_rescale(src_image, src_label, *src["geometry"])
            image, label, _ = paste(src_image, src_label, dst["image"], dst["label"])
            for c in mixed_classes(label, dst["label"], dst["classes"]):
                multi_hot[j, c - 1] = 1.0
            images.append(to_tensor(image))
            labels.append(torch.from_numpy(label))
        return {"image": torch.stack(images), "label": torch.stack(labels).long(), "labels": multi_hot}


@dataclass(frozen=True)
class MixLoss:
    """Weights of the terms added to the classification loss, and the soft-map settings."""

    focal_weight: float
    iou_weight: float
    dice_weight: float
    continuity_weight: float
    focal_gamma: float
    temperature: float


@dataclass(frozen=True)
class MixStep(TrainHooks):
    """The training step of a round whose pseudo labels used background score ``background``."""

    loss: MixLoss
    background: float

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        maps, logits = net(batch["image"])
        maps, target = maps.float(), batch["label"]
        present = torch.cat([torch.ones_like(batch["labels"][:, :1]), batch["labels"]], dim=1).bool()
        cls = F.multilabel_soft_margin_loss(logits.float(), batch["labels"])
        full = F.interpolate(maps, size=target.shape[-2:], mode="bilinear", align_corners=False)
        logits_full = class_logits(full, present, self.background, self.loss.temperature)
        probs_full = logits_full.softmax(dim=1)
        # continuity on the network's own grid: upsampled maps are smooth by construction
        probs_grid = class_logits(maps, present, self.background, self.loss.temperature).softmax(dim=1)
        soft_iou, soft_dice = soft_iou_and_dice_losses(probs_full, target)
        terms = {"classification": cls,
                 "focal": focal_loss(logits_full, target, self.loss.focal_gamma),
                 "soft_iou": soft_iou, "soft_dice": soft_dice,
                 "continuity": continuity_loss(probs_grid)}
        w = self.loss
        terms["loss"] = (cls + w.focal_weight * terms["focal"] + w.iou_weight * terms["soft_iou"]
                         + w.dice_weight * terms["soft_dice"] + w.continuity_weight * terms["continuity"])
        return terms
