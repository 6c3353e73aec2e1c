"""Image + label-map pairs for training a segmenter on pseudo labels, scribbles or masks.

The label source is a function from image id to PNG path, so the same dataset serves every
method: pseudo-label PNGs from the cache, the index's scribbles, or ground truth for an oracle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from stages.data.decoded import DecodedCache
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.tensors import to_tensor
from stages.data.transforms import AugmentConfig, augment, epoch_rng
from stages.errors import InputError, MissingInputError
from stages.io.label_png import IGNORE, label_dir_ids, read_label

LabelPath = Callable[[str], Path]


def label_dir_source(directory: str | os.PathLike, ids: list[str]) -> LabelPath:
    """Label paths inside ``directory``; refuses a folder that lacks any of ``ids``.

    Checked up front so a pseudo-label folder made for another split fails before training
    starts, not at the first missing file an hour in.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: label folder not found")
    missing = sorted(set(ids) - set(label_dir_ids(folder)))
    if missing:
        raise InputError(f"{folder}: {len(missing)} of {len(ids)} images have no label PNG "
                         f"(e.g. {', '.join(missing[:5])})")
    return lambda image_id: folder / f"{image_id}.png"


class SegmentationDataset(Dataset):
    """Augmented (image, label) crops; randomness comes from (seed, epoch, index) for resumability."""

    def __init__(self, index: DatasetIndex, split: str, label_path: LabelPath,
                 aug: AugmentConfig, seed: int) -> None:
        self.index = index
        self.ids = index.ids(split)
        self.label_path = label_path
        self.aug = aug
        self.seed = seed
        self.epoch = 0
        self.decoded = DecodedCache()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The un-augmented image and label (read-only), checked against each other and the class list."""
        image, label = self.decoded.get(i, lambda: self._decode_pair(i))
        return image, label

    def _decode_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.ids[i]
        image = load_rgb(self.index.image_path(image_id))
        path = self.label_path(image_id)
        label = read_label(path)
        if label.shape != image.shape[:2]:
            raise InputError(f"{path}: label is {label.shape[1]}x{label.shape[0]}, "
                             f"image {image_id} is {image.shape[1]}x{image.shape[0]}")
        if np.any((label >= self.index.num_classes) & (label != IGNORE)):
            raise InputError(f"{path}: values outside 0..{self.index.num_classes - 1} and {IGNORE}")
        return image, label

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, label = self.load_pair(i)
        image, label = augment(image, label, self.aug, epoch_rng(self.seed, self.epoch, i))
        return {"image": to_tensor(image), "label": torch.from_numpy(label.astype(np.int64))}
