"""Training crops for RSS: the segmentation crops plus what reward sources may look at."""
from __future__ import annotations

from pathlib import Path

import torch

from stages.data.index import DatasetIndex
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.transforms import AugmentConfig


class RewardDataset(SegmentationDataset):
    """Each item adds the image's id and its image-level labels (``tags``, a (C,) bool vector) to
    the crop and its reference map (the variant's labels)."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        item = super().__getitem__(i)
        image_id = self.ids[i]
        tags = torch.zeros(self.index.num_classes, dtype=torch.bool)
        tags[self.index.labels.get(image_id, [])] = True
        return {**item, "id": image_id, "tags": tags}


def reward_dataset(index: DatasetIndex, split: str, labels: Path, aug: AugmentConfig,
                   seed: int) -> RewardDataset:
    """Crops whose reference map is the variant's label (pseudo label, or mask with ``gt``)."""
    return RewardDataset(index, split, label_dir_source(labels, index.ids(split)), aug, seed)
