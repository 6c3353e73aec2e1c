"""Which images each training step sees: a pure function of (seed, epoch), optionally class-balanced.

Plain sampling is a seeded permutation per epoch. Class-balanced sampling draws the epoch's images
with replacement, each with a weight from repeat-factor sampling (LVIS, Gupta et al. 2019): a class
found in a fraction ``f_c`` of the images gets ``r_c = max(1, sqrt(t / f_c))``, an image the largest
``r_c`` of its image-level classes. LVIS repeats an image ``r`` times per epoch, which makes the epoch
length vary; drawing ``len(dataset)`` images with probability proportional to ``r`` keeps it fixed,
so the step -> (epoch, position) arithmetic that resuming relies on stays the same.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from stages.errors import InputError


def repeat_factors(image_classes: Sequence[Sequence[int]], threshold: float) -> torch.Tensor:
    """Each image's repeat factor for a frequency threshold ``t`` (classes rarer than ``t`` repeat).

    Images without a class (background only) and classes seen in at least ``t`` of the images
    keep factor 1; ``t`` = 0 gives every image 1.
    """
    n = len(image_classes)
    counts = Counter(c for classes in image_classes for c in set(classes))
    per_class = {c: max(1.0, math.sqrt(threshold * n / k)) for c, k in counts.items()}
    return torch.tensor([max((per_class[c] for c in classes), default=1.0) for classes in image_classes],
                        dtype=torch.float64)


class EpochBatchSampler(Sampler[list[int]]):
    """The micro-batches of one epoch for one rank, from a seeded order; can start mid-epoch.

    Step k of the epoch takes the k-th slice of ``batch_size x world x accumulation`` images of
    the order and splits it into micro-batches over ranks and accumulation, so a step sees the
    same images on any number of processes with the same effective batch. The order is a
    permutation, or with ``weights`` ``n`` draws with replacement in proportion to them.
    """

    def __init__(self, n: int, batch_size: int, accumulation: int, seed: int, epoch: int, rank: int,
                 world: int, start_step: int = 0, weights: torch.Tensor | None = None) -> None:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        if weights is None:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
        per_step = batch_size * world * accumulation
        self.batches = []
        for k in range(start_step, n // per_step):
            chunk = order[k * per_step:(k + 1) * per_step]
            for m in range(accumulation):
                j = m * world + rank
                self.batches.append(chunk[j * batch_size:(j + 1) * batch_size])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def steps_per_epoch(n: int, batch_size: int, world: int, accumulation: int = 1) -> int:
    spe = n // (batch_size * world * accumulation)
    if spe == 0:
        raise InputError(f"{n} training images cannot fill one step of train.batch_size {batch_size} x "
                         f"{world} process(es) x {accumulation} accumulated micro-batch(es); lower "
                         f"train.batch_size (or train.effective_batch_size) in the config")
    return spe
