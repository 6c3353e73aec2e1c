"""Pseudo labels from CAMs: background threshold, ignore band, dense CRF, parallel over images.

Ignore band (IRN's confident-foreground / confident-background idea, generalised): the label map
is made at ``threshold - band`` and at ``threshold + band``; a pixel on which the two disagree is
not trusted and becomes 255. With the CRF on, both maps are CRF outputs, so the band also
catches pixels the CRF flips. ``band = 0`` gives one plain map.

The CRF unary follows IRN's ``crf_inference_label``: the thresholded label map, with probability
0.7 on each pixel's label. The CRF runs over the labels that can occur (present classes plus
background), but the remaining 0.3 is split as if every class of the data set were a label, each
other label getting 0.3 / (C - 1) (this project's choice): IRN splits it among the present labels
only, which makes the unary of a two-label image 0.7 / 0.3 and lets the bilateral kernel overrule
it far more than on an image with many classes. With this split the CRF over present labels
gives the labels of the CRF over all C labels (99.98% of pixels on voc-aug) at a fraction of the
cost, and its pseudo labels scored +0.044 mIoU over IRN's split on voc-aug (benchmarks/crf.py,
benchmarks/README.md). A unary made from the CAM scores themselves is weaker where a CAM is
near the threshold and let the bilateral kernel flood objects in our measurements on voc-sample.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from stages.cams.threshold import to_class_ids, with_background
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.atomic import atomic_dir
from stages.io.cam_store import CamEntry, CamReader
from stages.io.label_png import IGNORE, write_label
from stages.labels.crf import CRFParams, dense_crf_many
from stages.runtime.pools import pool_context

LABEL_CONFIDENCE = 0.7  # IRN's gt_prob


@dataclass(frozen=True)
class PseudoLabelSettings:
    threshold: float
    ignore_band: float
    crf: CRFParams | None  # None: plain argmax, no CRF
    num_classes: int  # classes of the data set, background included: the CRF unary's split


def label_probabilities(channels: np.ndarray, num_labels: int, num_classes: int) -> np.ndarray:
    """(K, H, W) CRF input from a label map over K labels: LABEL_CONFIDENCE on the label, and
    (1 - LABEL_CONFIDENCE) / (num_classes - 1) on each other label, as over all classes."""
    probs = np.full((num_labels,) + channels.shape, (1 - LABEL_CONFIDENCE) / (num_classes - 1), np.float32)
    np.put_along_axis(probs, channels[None], LABEL_CONFIDENCE, axis=0)
    return probs


def _label_maps(image: np.ndarray | None, entry: CamEntry, thresholds: Sequence[float],
                crf: CRFParams | None, num_classes: int) -> list[np.ndarray]:
    """The label map at each threshold; the CRF runs once per threshold on one shared lattice."""
    channels = [np.argmax(with_background(entry.cams, max(t, 0.0)), axis=0) for t in thresholds]
    labels = len(entry.class_indices) + 1
    if crf is not None and labels > 1:
        refined = dense_crf_many(image, [label_probabilities(c, labels, num_classes) for c in channels], crf)
        channels = [np.argmax(q, axis=0) for q in refined]
    return [to_class_ids(c, entry.class_indices) for c in channels]


def pseudo_label(image: np.ndarray | None, entry: CamEntry, settings: PseudoLabelSettings) -> np.ndarray:
    """uint8 label map (H, W) for one image; ``image`` (HxWx3 uint8) is needed only for the CRF."""
    if settings.crf is not None and (image is None or image.shape[:2] != entry.size):
        shape = None if image is None else image.shape[:2]
        raise ValueError(f"CRF needs the image at the CAM size {entry.size}, got {shape}")
    t, band = settings.threshold, settings.ignore_band
    if band == 0:
        return _label_maps(image, entry, [t], settings.crf, settings.num_classes)[0]
    low, high = _label_maps(image, entry, [t - band, t + band], settings.crf, settings.num_classes)
    low[low != high] = IGNORE
    return low


# Per-process state of the worker pool: each process opens the CAM file itself, since an open
# HDF5 handle must not be shared between processes.
_worker: dict[str, object] = {}


def _init_worker(cams_path: str, settings: PseudoLabelSettings) -> None:
    _worker["reader"] = CamReader(cams_path)
    _worker["settings"] = settings


def _make_one(task: tuple[str, str, str]) -> str:
    image_id, image_path, out_path = task
    reader: CamReader = _worker["reader"]
    settings: PseudoLabelSettings = _worker["settings"]
    entry = reader.read(image_id)
    image = load_rgb(image_path) if settings.crf is not None else None
    try:
        label = pseudo_label(image, entry, settings)
    except ValueError as exc:
        raise InputError(f"{reader.path}: {image_id!r} (image {image_path}): {exc}") from exc
    write_label(out_path, label)
    return image_id


def generate_pseudo_labels(index: DatasetIndex, cams_path: str | os.PathLike, split: str,
                           settings: PseudoLabelSettings, out_dir: str | os.PathLike,
                           workers: int, on_done: Callable[[str], None] | None = None) -> int:
    """Write <id>.png for every image of ``split`` into ``out_dir``; ``on_done(id)`` per image.

    The PNGs go to a temporary sibling directory that is renamed onto ``out_dir`` only once all
    are written; a run that dies leaves ``out_dir`` as it was. With ``workers > 1`` a calling
    script needs the ``if __name__ == "__main__":`` guard, as for any forkserver or spawn pool.
    """
    ids = index.ids(split)
    with CamReader(cams_path) as reader:  # validate, then close: workers open their own
        reader.check_matches(index, ids)
    with atomic_dir(out_dir) as tmp_dir:
        tasks = [(i, str(index.image_path(i)), str(tmp_dir / f"{i}.png")) for i in ids]
        with contextlib.ExitStack() as stack:
            if workers <= 1:
                _init_worker(str(cams_path), settings)
                stack.callback(lambda: _worker.pop("reader").close())
                done = map(_make_one, tasks)
            else:
                pool = stack.enter_context(
                    pool_context(__name__).Pool(workers, _init_worker, (str(cams_path), settings)))
                done = pool.imap_unordered(_make_one, tasks, chunksize=4)
            for image_id in done:
                if on_done is not None:
                    on_done(image_id)
    return len(tasks)
