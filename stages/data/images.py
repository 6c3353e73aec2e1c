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

from stages.errors import InputError
from stages.io.image_files import open_image

ORIENTATION_TAG = 0x0112
# what a viewer does to show an image with this EXIF orientation; 1 (or none) leaves it as stored
ORIENTATIONS = {2: "mirror left-right", 3: "rotate 180", 4: "mirror top-bottom",
                5: "mirror and rotate 270 clockwise", 6: "rotate 90 clockwise",
                7: "mirror and rotate 90 clockwise", 8: "rotate 270 clockwise"}
TRANSPOSING = (5, 6, 7, 8)  # the orientations a viewer shows with width and height swapped


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The stored pixels as RGB, never turned by an EXIF orientation tag (see the module doc); a
    decompression bomb (``stages.io.image_files``) or an unreadable file is an InputError naming it."""
    try:
        with open_image(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag of an image, 1 when it has none (or an invalid one)."""
    try:
        with open_image(path) as im:
            value = im.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, struct.error):  # a broken EXIF block is no tag
        return 1
    return value if isinstance(value, int) and value in ORIENTATIONS else 1
