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


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> normalised 3xHxW float32, the input every backbone here expects."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std
