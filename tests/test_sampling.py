"""Class-balanced sampling: repeat factors on a hand-made example, and a weighted epoch order that
is still a pure function of (seed, epoch) and draws rare-class images more often."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from test_trainer import CPU, LeastSquares, Linear, Points

from stages.errors import InputError
from stages.runtime.sampling import EpochBatchSampler, repeat_factors
from stages.runtime.settings import TrainSettings
from stages.runtime.trainer import train_loop

# 10 images: class 1 in 9 of them, class 2 in one (with class 1), one image of background only
CLASSES = [[1]] * 8 + [[1, 2], []]


def test_repeat_factors_follow_the_rarest_class_of_an_image() -> None:
    r = repeat_factors(CLASSES, threshold=0.4)
    # class 1: f = 0.9 >= t -> 1; class 2: f = 0.1 -> sqrt(0.4 / 0.1) = 2; no class -> 1
    assert r.tolist() == pytest.approx([1.0] * 8 + [2.0, 1.0])
    assert repeat_factors(CLASSES, threshold=0.0).tolist() == [1.0] * 10


def test_weighted_order_is_seeded_resumable_and_favours_rare_images() -> None:
    weights = torch.tensor([1.0] * 9 + [4.0])
    full = EpochBatchSampler(10, 2, 1, seed=1, epoch=3, rank=0, world=1, weights=weights).batches
    assert full == EpochBatchSampler(10, 2, 1, seed=1, epoch=3, rank=0, world=1, weights=weights).batches
    assert full[2:] == EpochBatchSampler(10, 2, 1, seed=1, epoch=3, rank=0, world=1, start_step=2,
                                         weights=weights).batches
    seen = Counter(i for epoch in range(200) for batch in
                   EpochBatchSampler(10, 2, 1, seed=1, epoch=epoch, rank=0, world=1, weights=weights).batches
                   for i in batch)
    assert sum(seen.values()) == 2000  # epochs keep their length
    assert 3.0 < seen[9] / (sum(seen[i] for i in range(9)) / 9) < 5.0  # about 4x the others


class Recording(LeastSquares):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def training_step(self, net, batch, ctx):
        self.seen.update(int(x) for x in batch["x"][:, 0])
        return super().training_step(net, batch, ctx)


def _seen(tmp_path: Path, class_balance: float, image_classes=CLASSES) -> Counter:
    hooks = Recording()
    settings = TrainSettings(steps=100, batch_size=2, checkpoint_every=100, lr=0.001, class_balance=class_balance)
    train_loop(Linear(2, 1), hooks, Points(10), settings, CPU, tmp_path / f"{class_balance}.pt",
               tmp_path / f"{class_balance}.csv", {"test": 1}, image_classes=image_classes)
    return hooks.seen


def test_train_class_balance_draws_the_rare_class_image_more_often(tmp_path: Path) -> None:
    uniform, balanced = _seen(tmp_path, 0.0), _seen(tmp_path, 0.4)
    assert uniform[8] == 20  # 100 steps x 2 = 20 epochs, each image once per epoch
    assert balanced[8] > 30  # repeat factor 2 of 11 in all: 200 x 2/11 = 36 expected


def test_train_class_balance_needs_the_image_classes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train.class_balance needs each image's classes"):
        _seen(tmp_path, 0.4, image_classes=None)
