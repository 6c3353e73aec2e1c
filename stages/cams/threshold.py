"""From CAMs to label maps with a constant background score, and the sweep that picks it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from stages.errors import InputError
from stages.metrics.confusion import ConfusionMatrix


def threshold_grid(start: float, stop: float, step: float) -> np.ndarray:
    """Thresholds start, start+step, ... up to and including ``stop`` (rounded, so 0.6 is hit)."""
    if step <= 0 or stop < start:
        raise InputError(f"bad threshold range: start={start} stop={stop} step={step}")
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(count), 10)


def with_background(cams: np.ndarray, threshold: float) -> np.ndarray:
    """Prepend the constant background score as channel 0: (K, H, W) -> (K+1, H, W)."""
    bg = np.full((1,) + cams.shape[1:], threshold, dtype=cams.dtype)
    return np.concatenate([bg, cams], axis=0)


def to_class_ids(channel_map: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Map channel numbers of a with_background stack (0 = background) to data-set class ids."""
    lut = np.concatenate([[0], np.asarray(class_indices, dtype=np.int64)]).astype(np.uint8)
    return lut[channel_map]


def labels_at_threshold(cams: np.ndarray, class_indices: np.ndarray, threshold: float) -> np.ndarray:
    """Each pixel's strongest present class, or background where no CAM exceeds the threshold."""
    return to_class_ids(np.argmax(with_background(cams, threshold), axis=0), class_indices)


def sweep_thresholds(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    thresholds: np.ndarray,
    num_classes: int,
) -> list[ConfusionMatrix]:
    """One pass over (gt, cams, class_indices) samples, one confusion matrix per threshold.

    A pixel is foreground at threshold t exactly when its strongest CAM is above t (background
    wins ties, as with ``labels_at_threshold``), so the argmax is computed once per image.
    """
    matrices = [ConfusionMatrix(num_classes) for _ in thresholds]
    for gt, cams, class_indices in samples:
        if cams.shape[0] == 0:
            fg_max = np.zeros(gt.shape, dtype=np.float32)
            fg_class = np.zeros(gt.shape, dtype=np.uint8)
        else:
            fg_max = cams.max(axis=0)
            fg_class = np.asarray(class_indices, dtype=np.uint8)[np.argmax(cams, axis=0)]
        for t, matrix in zip(thresholds, matrices):
            # compare in the CAMs' own precision, as with_background does
            matrix.update(gt, np.where(fg_max > fg_max.dtype.type(t), fg_class, 0).astype(np.uint8))
    return matrices


def read_best(path: str | Path) -> tuple[float, float]:
    """eval_cam's best.json: (best threshold, mIoU at it); a file that lacks them is named."""
    try:
        best = json.loads(Path(path).read_text())
        return float(best["threshold"]), float(best["miou"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: cannot read eval_cam's best threshold ({type(exc).__name__}: {exc})") from exc
