"""Opening an image, mask or scribble file: a decompression bomb is bad input naming the file.

A PNG or JPEG header can declare a size far beyond any photograph (65 535 x 65 535 in a file of a
few hundred bytes); decoding it would take gigabytes, and every later stage holds several
full-size copies (CAMs per class). PIL refuses sizes above twice ``Image.MAX_IMAGE_PIXELS`` with
its own error, which names no file, and only warns between once and twice. Here both are refused
from the header, before any pixel is decoded, with one line that names the file: check_dataset
reports it as a row, so ``policy: skip`` drops the image.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator

from PIL import Image

from stages.errors import InputError


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open(path)``, refusing a declared size beyond PIL's decompression-bomb limit."""
    try:
        with warnings.catch_warnings():  # process-wide for this call: no stage opens images in threads
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        detail = str(exc).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise InputError(f"{path}: declared size beyond PIL's decompression-bomb limit ({detail}); not "
                         f"decoded. Shrink the file or remove its id from the data set") from exc
    with im:
        yield im
