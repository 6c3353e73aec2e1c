"""Label inference H(M, a): new labels for unlabelled pixels near the labelled ones.

Reconstructed (the paper's Eq. 1-2 are missing from its text): an unlabelled pixel within the
round's extension radius of a labelled pixel (Euclidean distance to the nearest labelled pixel,
scipy's exact distance transform) takes the teacher's predicted class k = argmax P when P_k
exceeds the threshold the action gives class k; otherwise it stays unlabelled. Labelled pixels
never change (the scribbles stay, and so do labels adopted in earlier rounds). With
``restrict_classes`` the argmax runs over background and the classes already in the map, which
under scribble supervision are the image's classes (every object carries a stroke).

The radius of a round is a fraction of the image's longer side (``radius_unit: fraction``, the
default: the paper's 21 to 101 px are about 4% to 20% of a VOC image's 500 px) or pixels
(``px``); ``radius_in_pixels`` turns one into the other.

Action spaces (the paper's "AOD"): ``two`` = (tau_o for every object class, tau_g for
background), the paper's best; ``one`` = one threshold for all classes; ``per_class`` = one
threshold per class, background first.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from stages.io.label_png import IGNORE

ACTION_SPACES = ("one", "two", "per_class")
RADIUS_UNITS = ("fraction", "px")


def action_dim(space: str, num_classes: int) -> int:
    return {"one": 1, "two": 2, "per_class": num_classes}[space]


def radius_in_pixels(radius: float, unit: str, shape_hw: tuple[int, int]) -> float:
    """A round's radius in pixels on an image of ``shape_hw``: a fraction of its longer side, or
    pixels as given."""
    if unit == "fraction":
        return radius * max(shape_hw)
    if unit == "px":
        return float(radius)
    raise ValueError(f"unknown radius unit {unit!r}; known: {', '.join(RADIUS_UNITS)}")


def class_thresholds(action: np.ndarray, space: str, num_classes: int) -> np.ndarray:
    """The threshold of every class (background first) that an action in ``space`` stands for."""
    action = np.asarray(action, dtype=np.float64)
    if space == "one":
        return np.full(num_classes, action[0])
    if space == "two":
        tau_o, tau_g = action
        return np.concatenate([[tau_g], np.full(num_classes - 1, tau_o)])
    if space == "per_class":
        return action.copy()
    raise ValueError(f"unknown action space {space!r}; known: {', '.join(ACTION_SPACES)}")


def infer_labels(label: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, radius: float,
                 restrict_classes: bool = True) -> np.ndarray:
    """The map M' = H(M, a): ``label`` (H, W) uint8 with 255 unlabelled, ``probs`` (K, H, W)."""
    unlabelled = label == IGNORE
    out = label.copy()
    if unlabelled.all() or not unlabelled.any():
        return out  # nothing to grow from, or nothing left to label
    near = ndimage.distance_transform_edt(unlabelled) <= radius
    p = probs
    if restrict_classes:
        allowed = np.zeros(len(probs), dtype=bool)
        allowed[0] = True
        allowed[np.unique(label[~unlabelled])] = True
        p = np.where(allowed[:, None, None], probs, -1.0)
    k = p.argmax(0)
    confident = np.take_along_axis(p, k[None], 0)[0] > np.asarray(thresholds)[k]
    take = unlabelled & near & confident
    out[take] = k[take]
    return out
