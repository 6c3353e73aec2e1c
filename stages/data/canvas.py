"""Canvases: images of different sizes padded (bottom and right) to shared sizes, so that one
forward pass takes several of them, and the batches that group images by canvas.

An image's outputs, cropped back from its canvas, depend on the image and its canvas alone, never
on its batch mates: every inference pass that batches whole images pads them this way.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable, Iterable, Iterator, TypeVar

import torch
import torch.nn.functional as F

# Every scaled image is padded (bottom and right, with zeros: the mean colour after normalising) to
# a multiple of this, as mmsegmentation's ``size_divisor`` does, so that images of different sizes
# share a forward pass (the toy set's 400 train_aug images come in 387 sizes, batches of one, and
# in 89 canvases). `python -m benchmarks.cam_padding` on the toy set (time vs exact sizes, CAM mIoU
# on `train`): exact 1.00 and 0.307; 8: 0.91, 0.309; 16: 0.64, 0.305; 32 (the backbones' stride,
# which pads up to a third of a small image with flat colour): 0.48, 0.280.
SIZE_DIVISOR = 16


# No canvas side below this. With bf16 autocast on this AMX CPU, resnet18 gave different outputs
# from process to process, NaN among them, for canvases 32 px wide and 48 or more high (a
# layer4 map one column wide); every side from 48 up, in every pairing tried (32 to 80 px), gave
# the same bytes in 8 processes out of 8. A toy image at scale 0.5 made PL-Mix's round fail on NaN
# CAMs in CI. No default-run canvas is that small (its images are 96 px and up). On an AMD EPYC
# (Zen 4: AVX512-BF16, no AMX) canvases of 64x32, 48x32, 80x32 and 32x64 gave the same bytes and
# no NaN in 6 processes out of 6; the floor is kept on every CPU, so a canvas does not depend on it.
MIN_CANVAS_SIDE = 48


def padded_size(size: tuple[int, int], divisor: int) -> tuple[int, int]:
    return tuple(max(MIN_CANVAS_SIDE, -(-n // divisor) * divisor) for n in size)


T = TypeVar("T")


def pad_to(image: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) padded with zeros at the bottom and right to (..., *canvas): zeros are the mean
    colour of a normalised image."""
    return F.pad(image, (0, canvas[1] - image.shape[-1], 0, canvas[0] - image.shape[-2]))


def grouped_batches(items: Iterable[tuple[str, T]], batch_size: int, key: Callable[[T], Hashable],
                    max_pending: int | None = None) -> Iterator[tuple[list[str], list[T]]]:
    """Group a stream of images into batches of equal ``key``, holding at most ``max_pending``.

    When too many groups are pending, the fullest goes out short.
    """
    max_pending = max_pending or 8 * batch_size
    pending: dict[Hashable, list[tuple[str, T]]] = defaultdict(list)
    count = 0
    for image_id, image in items:
        image_key = key(image)
        group = pending[image_key]
        group.append((image_id, image))
        count += 1
        if len(group) < batch_size and count < max_pending:
            continue
        out_key = image_key if len(group) >= batch_size else max(pending, key=lambda k: len(pending[k]))
        out = pending.pop(out_key)
        count -= len(out)
        yield [i for i, _ in out], [t for _, t in out]
    for out in pending.values():
        yield [i for i, _ in out], [t for _, t in out]
