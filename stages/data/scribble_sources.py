"""Where a variant's scribbles come from: one folder of ``<id>.png`` per source and split.

- ``dataset``: the data set's own scribbles (the voc kind's ScribbleSup XML, rasterised at 3 px
  when the archives were unpacked; the toy set's synthetic strokes; a folder's ``Scribbles/``).
  An image without a scribble file gets an all-255 map: it then teaches nothing, as in
  ScribbleSup, where a few images have no scribble.
- ``synthetic``: strokes synthesised from the ground-truth masks of the split, for data sets
  without scribbles (or to compare drawn and synthetic strokes on the same images).
- ``pseudo``: strokes synthesised from cached pseudo labels of a refinement. Their 255 pixels
  are the unsure ones, so the strokes lie in the eroded confident cores; this runs a scribble
  method on image-level labels alone, through the CAM trunk.

Every map is drawn from its own generator seeded by (seed, id), so a file does not depend on
which other images the split holds.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stages.data.index import DatasetIndex
from stages.data.scribbles import synthesize_scribbles
from stages.errors import InputError, MissingInputError
from stages.io.atomic import atomic_dir
from stages.io.image_files import open_image
from stages.io.label_png import IGNORE, label_path, read_label, write_label

SOURCES = ("dataset", "synthetic", "pseudo")


@dataclass(frozen=True)
class StrokeSettings:
    """How strokes are synthesised (``synthetic`` and ``pseudo``); config ``scribbles``."""

    seed: int = 0
    background_strokes: int = 2
    min_area: int = 16  # objects (connected components) smaller than this get no stroke


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(image_id.encode())])


def _reader(source: str, index: DatasetIndex, split: str, pseudo_labels: Path | None,
            settings: StrokeSettings) -> Callable[[str], np.ndarray | None]:
    """A function from image id to its scribble map (None: the image has no scribbles)."""
    if source == "dataset":
        if index.scribble_dir is None:
            raise InputError(f"data set {index.name!r} has no scribbles (no Scribbles/ folder); "
                             f"use scribbles: synthetic (from masks) or pseudo:<refinement>")

        def own(image_id: str) -> np.ndarray | None:
            path = index.scribble_path(image_id)
            return read_label(path) if path.is_file() else None
        return own
    if source == "synthetic":
        def from_mask(image_id: str) -> np.ndarray:
            path = index.mask_path(image_id, split)
            if not path.is_file():
                raise MissingInputError(f"{path}: no mask for {image_id!r} ({split}), which synthetic "
                                        f"scribbles are drawn from")
            return synthesize_scribbles(read_label(path), image_rng(settings.seed, image_id),
                                        background_count=settings.background_strokes,
                                        min_area=settings.min_area)
        return from_mask
    if source == "pseudo":
        if pseudo_labels is None or not Path(pseudo_labels).is_dir():
            raise MissingInputError(f"{pseudo_labels}: pseudo-label folder not found (scribbles: pseudo)")

        def from_pseudo(image_id: str) -> np.ndarray:
            path = label_path(pseudo_labels, image_id)
            if not path.is_file():
                raise MissingInputError(f"{path}: no pseudo label for {image_id!r}")
            return synthesize_scribbles(read_label(path), image_rng(settings.seed, image_id),
                                        background_count=settings.background_strokes,
                                        min_area=settings.min_area, core_only=True)
        return from_pseudo
    raise InputError(f"unknown scribble source {source!r}; known: {', '.join(SOURCES)}")


def write_scribble_source(index: DatasetIndex, split: str, source: str, out_dir: str | Path,
                          pseudo_labels: Path | None = None, settings: StrokeSettings = StrokeSettings(),
                          on_done: Callable[[str], None] | None = None) -> dict[str, float]:
    """Write the scribbles of every image of ``split`` into ``out_dir`` (all or nothing).

    Returns counts for the log: images, images without scribbles, fraction of labelled pixels.
    """
    read = _reader(source, index, split, pseudo_labels, settings)
    ids = index.ids(split)
    empty, labelled, total = 0, 0, 0
    with atomic_dir(out_dir) as tmp:
        for image_id in ids:
            scribble = read(image_id)
            if scribble is None:
                scribble = np.full(_image_hw(index, image_id), IGNORE, np.uint8)
            strokes = int((scribble != IGNORE).sum())
            empty += strokes == 0
            labelled += strokes
            total += scribble.size
            write_label(label_path(tmp, image_id), scribble)
            if on_done is not None:
                on_done(image_id)
    return {"images": len(ids), "without_strokes": empty, "labelled_fraction": labelled / max(total, 1)}


def _image_hw(index: DatasetIndex, image_id: str) -> tuple[int, int]:
    with open_image(index.image_path(image_id)) as im:
        return im.height, im.width
