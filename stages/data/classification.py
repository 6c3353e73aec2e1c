"""Image-level (multi-label) training samples for the CAM network."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from stages.data.decoded import DecodedCache
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.tensors import to_tensor
from stages.data.transforms import AugmentConfig, augment, epoch_rng
from stages.errors import InputError, MissingEntryError


class ClassificationDataset(Dataset):
    """Augmented crops with multi-hot foreground labels (background has no entry).

    Augmentation randomness comes from (seed, epoch, index), never from a global RNG, so a
    resumed run and worker processes reproduce the exact samples of an uninterrupted run.
    """

    def __init__(self, index: DatasetIndex, split: str, aug: AugmentConfig, seed: int) -> None:
        self.index = index
        self.ids = index.ids(split)
        self.aug = aug
        self.seed = seed
        self.epoch = 0
        self.decoded = DecodedCache()
        missing = [i for i in self.ids if i not in index.labels]
        if missing:
            raise MissingEntryError(f"split {split!r} of {index.name!r}: no image-level labels for "
                           f"{len(missing)} ids, e.g. {missing[:3]}")
        self.targets = torch.zeros(len(self.ids), index.num_classes - 1)
        for row, image_id in enumerate(self.ids):
            for c in index.labels[image_id]:
                if not 1 <= c < index.num_classes:
                    raise InputError(f"{image_id}: label {c} outside foreground classes 1..{index.num_classes - 1}")
                self.targets[row, c - 1] = 1.0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, = self.decoded.get(i, lambda: (load_rgb(self.index.image_path(self.ids[i])),))
        image, _ = augment(image, None, self.aug, epoch_rng(self.seed, self.epoch, i))
        return {"image": to_tensor(image), "labels": self.targets[i].clone()}
