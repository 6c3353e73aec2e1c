"""Joint augmentation of an image and (optionally) its label map, driven by an explicit RNG.

The RNG is passed in rather than global so a dataset can seed it from (seed, epoch, index):
that is what makes a resumed run see exactly the same augmented batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.io.label_png import IGNORE
from stages.runtime.settings import TrainSettings


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int
    scale_range: tuple[float, float] = (0.7, 1.3)
    flip: bool = True
    color_jitter: float = 0.3  # brightness/contrast/saturation strength; 0 switches it off

    @classmethod
    def from_settings(cls, settings: TrainSettings) -> "AugmentConfig":
        return cls(crop_size=settings.crop_size, scale_range=settings.scale_range,
                   color_jitter=settings.color_jitter)


def resize(image: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    h, w = size_hw
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((w, h), mode))


def color_jitter_image(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness b, then contrast c about the image mean, then saturation s about each pixel's
    grey, folded into one affine map per pixel: out = s*c*b*x + c*b*(1-s)*grey(x) + b*(1-c)*mean(x).
    The same as applying the three in turn (to float rounding), in fewer passes over the image."""
    b, c, s = 1.0 + rng.uniform(-strength, strength, size=3)
    img = image.astype(np.float32)
    offset = np.float32(c * b * (1.0 - s)) * img.mean(axis=2, keepdims=True) + np.float32(b * (1.0 - c) * img.mean())
    img *= np.float32(s * c * b)
    img += offset
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def augment(image: np.ndarray, label: np.ndarray | None, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Random rescale, flip, colour jitter, then a crop_size square crop (padding with 0 / 255)."""
    h, w = image.shape[:2]
    scale = rng.uniform(*cfg.scale_range)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = resize(image, (nh, nw))
    if label is not None:
        label = resize(label, (nh, nw), nearest=True)
    if cfg.flip and rng.random() < 0.5:
        image = image[:, ::-1]
        label = label[:, ::-1] if label is not None else None
    if cfg.color_jitter > 0:
        image = color_jitter_image(image, cfg.color_jitter, rng)
    return random_crop(image, label, cfg.crop_size, rng)


def random_crop(image: np.ndarray, label: np.ndarray | None, size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = image.shape[:2]
    ph, pw = max(size, h), max(size, w)
    canvas = np.zeros((ph, pw, 3), dtype=np.uint8)
    oy, ox = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    canvas[oy:oy + h, ox:ox + w] = image
    lab_canvas = None
    if label is not None:
        lab_canvas = np.full((ph, pw), IGNORE, dtype=np.uint8)
        lab_canvas[oy:oy + h, ox:ox + w] = label
    y, x = int(rng.integers(0, ph - size + 1)), int(rng.integers(0, pw - size + 1))
    image = np.ascontiguousarray(canvas[y:y + size, x:x + size])
    if lab_canvas is not None:
        lab_canvas = np.ascontiguousarray(lab_canvas[y:y + size, x:x + size])
    return image, lab_canvas


def epoch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])
