"""Reading images: every JPEG (grayscale, CMYK, palette) comes back as RGB uint8 HxWx3.

Orientation: pixels are used as stored, the EXIF orientation tag is ignored, for images, masks
and scribbles alike. That is the VOC convention (its masks were drawn on the stored pixels) and
what PIL does; applying the tag to images but not to masks, or only in some stages, would turn
an image against its mask. Viewers do apply it, so check_dataset warns about every image whose
tag would show it turned (:func:`exif_orientation`).
"""
from __future__ import annotations

import os
import struct

import numpy as np
import torch
from PIL import Image

from stages.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ORIENTATION_TAG = 0x0112
# what a viewer does to show an image with this EXIF orientation; 1 (or none) leaves it as stored
ORIENTATIONS = {2: "mirror left-right", 3: "rotate 180", 4: "mirror top-bottom",
                5: "mirror and rotate 270 clockwise", 6: "rotate 90 clockwise",
                7: "mirror and rotate 90 clockwise", 8: "rotate 270 clockwise"}
TRANSPOSING = (5, 6, 7, 8)  # the orientations a viewer shows with width and height swapped


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The stored pixels as RGB, never turned by an EXIF orientation tag (see the module doc)."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag of an image, 1 when it has none (or an invalid one)."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, struct.error):  # a broken EXIF block is no tag
        return 1
    return value if isinstance(value, int) and value in ORIENTATIONS else 1


_MEAN_255 = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255
_STD_255 = np.asarray(IMAGENET_STD, dtype=np.float32) * 255


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> normalised 3xHxW float32, the input every backbone here expects.

    Done in NumPy: torch's elementwise ops spread over threads that data-loading workers and
    concurrent jobs are already using, which made this 50-100x slower on a shared CPU.
    """
    normalised = (image.astype(np.float32) - _MEAN_255) / _STD_255
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
