"""Decoded training images and label maps kept in memory: epochs after the first decode nothing.

A default-run segmenter sees each of its 400 images 12 times, and on a CPU the data are loaded on
the training step's own thread (``num_workers: 0``), where decoding and checking a PNG pair is
a large part of a sample's preparation.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from torch.utils.data import get_worker_info

BUDGET_BYTES = 512 * 2 ** 20  # per dataset; VOC's 10k train_aug pairs would need about 8 GB

Arrays = tuple[np.ndarray, ...]


class DecodedCache:
    """Arrays by item index, up to a byte budget; items past it are decoded every time.

    Kept arrays are read-only, so a transform that changed one in place would fail instead of
    changing every later epoch's sample. DataLoader worker processes keep nothing: the trainer
    starts new ones every epoch.
    """

    def __init__(self, budget_bytes: int = BUDGET_BYTES) -> None:
        self.budget, self.used = budget_bytes, 0
        self.items: dict[int, Arrays] = {}

    def get(self, i: int, decode: Callable[[], Arrays]) -> Arrays:
        kept = self.items.get(i)
        if kept is not None:
            return kept
        arrays = decode()
        size = sum(a.nbytes for a in arrays)
        if get_worker_info() is None and self.used + size <= self.budget:
            for a in arrays:
                a.setflags(write=False)
            self.items[i] = arrays
            self.used += size
        return arrays
