"""Reading images: every JPEG (grayscale, CMYK, palette) comes back as RGB uint8 HxWx3."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc


_MEAN_255 = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255
_STD_255 = np.asarray(IMAGENET_STD, dtype=np.float32) * 255


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> normalised 3xHxW float32, the input every backbone here expects.

    Done in NumPy: torch's elementwise ops spread over threads that data-loading workers and
    concurrent jobs are already using, which made this 50-100x slower on a shared CPU.
    """
    normalised = (image.astype(np.float32) - _MEAN_255) / _STD_255
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
