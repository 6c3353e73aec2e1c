"""UGRL's training crops: the image, its label map, its image-level labels, and a GT crop kept
only for the reliable-pool precision report.

``label`` is the cached pseudo label (``targets: cached``); with ``targets: online`` it is 0 inside
the image and IGNORE in the crop's padding, and the method writes the network's own CAM labels
over the 0s. ``gt`` is the ground-truth mask of the same crop for images of the ``train`` split
that have one (IGNORE elsewhere). The method reads it under ``no_grad`` to count how often pool
pixels carry the right label; no loss ever sees it (a test checks that the losses ignore it).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from stages.data.classification import ClassificationDataset
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.segmentation import LabelPath, SegmentationDataset
from stages.data.tensors import to_tensor
from stages.data.transforms import AugmentConfig, augment, epoch_rng
from stages.io.label_png import IGNORE, read_label

REPORT_SPLIT = "train"  # the split whose GT masks the pool-precision report reads


class UGRLDataset(Dataset):
    """Crops whose randomness comes from (seed, epoch, index), like every dataset of the loop."""

    def __init__(self, index: DatasetIndex, split: str, label_path: LabelPath | None,
                 aug: AugmentConfig, seed: int) -> None:
        self.index = index
        self.aug = aug
        self.seed = seed
        self.epoch = 0
        # image-level labels, checked against the class list there
        self.targets = ClassificationDataset(index, split, aug, seed).targets
        self.pairs = SegmentationDataset(index, split, label_path, aug, seed) if label_path else None
        self.ids = index.ids(split)
        report = set(index.splits.get(REPORT_SPLIT, []))
        self.gt_ids = {i for i in self.ids if i in report and index.mask_path(i, REPORT_SPLIT).is_file()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def _gt(self, i: int, image: np.ndarray) -> np.ndarray | None:
        image_id = self.ids[i]
        if image_id not in self.gt_ids:
            return None
        gt = read_label(self.index.mask_path(image_id, REPORT_SPLIT))
        return gt if gt.shape == image.shape[:2] else None

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.pairs is not None:
            image, label = self.pairs.load_pair(i)
        else:
            image = load_rgb(self.index.image_path(self.ids[i]))
            label = np.zeros(image.shape[:2], dtype=np.uint8)
        crop, label = augment(image, label, self.aug, epoch_rng(self.seed, self.epoch, i))
        gt = self._gt(i, image)
        if gt is None:
            gt = np.full_like(label, IGNORE)
        else:  # the same draws give the same geometry
            _, gt = augment(image, gt, self.aug, epoch_rng(self.seed, self.epoch, i))
        return {"image": to_tensor(crop), "label": torch.from_numpy(label.astype(np.int64)),
                "labels": self.targets[i].clone(), "gt": torch.from_numpy(gt.astype(np.int64))}
