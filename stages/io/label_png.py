"""Label maps as VOC palette PNGs (255 = ignore): viewable in any image viewer."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from stages.io.atomic import atomic_path

IGNORE = 255


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (bit-interleaved), 256 RGB triples flattened."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = voc_palette()


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as uint8 indices (palette PNGs keep their indices, not colours)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: label PNG must be palette (P) or grayscale (L), got mode {im.mode}")
        return np.array(im, dtype=np.uint8)


def write_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write uint8 indices as a palette PNG, atomically."""
    if label.ndim != 2:
        raise ValueError(f"{path}: label must be 2-D, got shape {label.shape}")
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def colorize(label: np.ndarray) -> np.ndarray:
    """RGB rendering of a label map, for inspection panels."""
    pal = np.asarray(_PALETTE, dtype=np.uint8).reshape(256, 3)
    return pal[label]


def label_dir_ids(directory: str | os.PathLike) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.png"))
