"""PL-Mix's mix-up of one pair: move the source's objects onto a partner image, label included.

The paste mask is hard: the source pixels whose pseudo label is a foreground class. Background
and ignore (255) pixels of the source are never pasted, so everything outside the mask keeps the
partner's image *and* the partner's label, and image and label agree on every pixel.

Before pasting, the source image and its label can be rotated and rescaled together about the
crop centre, through one affine map (bilinear for the image, nearest for the label); pixels that
the map brings in from outside the crop are black with label 255, hence never pasted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.io.label_png import IGNORE


@dataclass(frozen=True)
class PasteSettings:
    """Random geometry of the pasted source: ``transform`` False pastes it where it is."""

    transform: bool
    scale_range: tuple[float, float]  # rescale factors, drawn log-uniformly
    max_rotation: float  # degrees; the angle is uniform in [-max, max]

    def draw(self, rng: np.random.Generator) -> tuple[float, float] | None:
        """(angle in degrees, scale) for one source, or None when the transform is off.

        Log-uniform scale makes shrinking by k and growing by k equally likely.
        """
        if not self.transform:
            return None
        lo, hi = self.scale_range
        scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
        return angle, scale


def _inverse_affine(size_hw: tuple[int, int], angle: float, scale: float) -> tuple[float, ...]:
    """PIL's output->input affine coefficients for a rotation (counter-clockwise) and a rescale
    about the image centre."""
    h, w = size_hw
    t = -math.radians(angle)
    a, b = math.cos(t) / scale, math.sin(t) / scale
    d, e = -math.sin(t) / scale, math.cos(t) / scale
    cx, cy = w / 2, h / 2
    return a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy


def rotate_rescale(image: np.ndarray, label: np.ndarray, angle: float,
                   scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The image (HxWx3 uint8) and its label (HxW uint8) under the same rotation and rescale."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    h, w = label.shape
    coeffs = _inverse_affine((h, w), angle, scale)
    moved_image = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                   Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    moved_label = Image.fromarray(label).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                   Image.Resampling.NEAREST, fillcolor=IGNORE)
    return np.asarray(moved_image).copy(), np.asarray(moved_label).copy()


def paste(src_image: np.ndarray, src_label: np.ndarray, dst_image: np.ndarray,
          dst_label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mixed image, mixed label, mask): source where its label is foreground, partner elsewhere."""
    if not (src_image.shape == dst_image.shape and src_label.shape == dst_label.shape == src_image.shape[:2]):
        raise ValueError(f"source {src_image.shape}/{src_label.shape} and partner "
                         f"{dst_image.shape}/{dst_label.shape} must have one size")
    mask = (src_label != 0) & (src_label != IGNORE)
    image = np.where(mask[..., None], src_image, dst_image)
    label = np.where(mask, src_label, dst_label).astype(np.uint8)
    return image, label, mask


def mixed_classes(mixed_label: np.ndarray, dst_label: np.ndarray, dst_classes: list[int]) -> list[int]:
    """The foreground classes of a mixed image, judged from what is visible in it.

    A class counts when some pixel of the mixed label carries it: the pasted source classes, and
    the partner classes the paste left (partly) uncovered; a partner class whose pseudo-label
    pixels are all covered is dropped. A class of the partner's image-level labels that its
    pseudo label never located in the crop is kept: nothing says it was covered, and dropping it
    would teach the network to miss exactly the objects its CAMs already miss.
    """
    visible = set(np.unique(mixed_label).tolist()) - {0, IGNORE}
    unlocated = set(dst_classes) - set(np.unique(dst_label).tolist())
    return sorted(visible | unlocated)
