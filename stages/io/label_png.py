"""Label maps as VOC palette PNGs (255 = ignore): viewable in any image viewer.

Pixels are read as stored: an EXIF orientation tag in a PNG is ignored, as for images
(``stages.data.images``), so a mask lines up with the raw pixels of its image. Files are named
by image id, and an id that is not a plain name (``stages.io.ids``) is refused here too, the
last place before a pseudo label or prediction is written.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from stages.errors import InputError
from stages.io.atomic import atomic_path
from stages.io.ids import check_id
from stages.io.image_files import open_image

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


def label_path(directory: str | os.PathLike, image_id: str) -> Path:
    """``directory/<image_id>.png``, refusing an id that would point elsewhere (``../x``, ``/x``)."""
    return Path(directory) / f"{check_id(image_id, f'label PNG in {directory}')}.png"


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as uint8 indices (palette PNGs keep their indices, not colours).

    No EXIF transpose, like every reader here: VOC masks are aligned with the stored pixels. A
    decompression bomb is an InputError naming the file (``stages.io.image_files``).
    """
    with open_image(path) as im:
        if im.mode not in ("P", "L"):
            raise InputError(f"{path}: label PNG must be palette (P) or grayscale (L), got mode {im.mode}")
        return np.array(im, dtype=np.uint8)


def write_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write uint8 indices as a palette PNG, atomically.

    The file name must be ``<plain id>.png``: callers build it from an id, and a hidden or
    control-character name would be a file the next stage never finds. Build paths from ids with
    :func:`label_path`, which also refuses ids holding a path.
    """
    path = Path(path)
    check_id(path.name.removesuffix(".png"), f"label PNG {str(path)!r}")
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
