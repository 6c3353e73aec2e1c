"""Fully connected CRF (Kraehenbuehl and Koltun) over any number of labels, via pydensecrf2.

Cost grows with the number of labels, so callers pass only the labels that can occur in the
image (present classes plus background) rather than the whole class list, and with the number of
pixels, so ``CRFParams.scale`` < 1 runs it on a smaller copy of the image (the kernels' widths in
pixels shrink with it) and brings the result back by bilinear interpolation: on voc-aug's 500 px
images, half the side takes 0.30x the time and gives pseudo labels of the same mIoU
(benchmarks/crf.py ``--only scale``).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pydensecrf.densecrf as dcrf
from PIL import Image

from stages.errors import InputError

_MIN_PROB = 1e-8


@dataclass(frozen=True)
class CRFParams:
    """Mean-field iterations, the two pairwise kernels (positions in px of the full image, colours
    in 0..255) and the resolution it runs at, a fraction of the image's side."""

    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise InputError(f"the dense CRF's scale must be in (0, 1], got {self.scale}")


def add_crf_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True) -> None:
    """``--iterations``, ``--gaussian-sxy``, ... : one flag per ``CRFParams`` field, the same in
    every stage that runs the CRF (the workflow passes the config's ``crf`` mapping as flags); a
    field with a default (``--scale``) may be left out."""
    kinds = typing.get_type_hints(CRFParams)
    for field in dataclasses.fields(CRFParams):
        optional = field.default is not dataclasses.MISSING
        parser.add_argument("--" + field.name.replace("_", "-"), type=kinds[field.name],
                            required=required and not optional, default=field.default if optional else None,
                            help=None if required and not optional else "dense CRF parameter")


def crf_params_from(args: argparse.Namespace) -> CRFParams:
    """The ``CRFParams`` that ``add_crf_arguments``' flags hold; a missing one is named."""
    missing = [f.name for f in dataclasses.fields(CRFParams) if getattr(args, f.name) is None]
    if missing:
        raise InputError("dense CRF needs " + " ".join("--" + m.replace("_", "-") for m in missing))
    return CRFParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CRFParams)})


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refine per-pixel label probabilities (K, H, W) with the image's colours; returns (K, H, W).

    The unary is -log(probs); take ``argmax(axis=0)`` of the result for a label map.
    """
    return dense_crf_many(image, [probs], params)[0]


def dense_crf_many(image: np.ndarray, unaries: Sequence[np.ndarray], params: CRFParams) -> list[np.ndarray]:
    """``dense_crf`` of several probability maps over the same image and labels.

    The pairwise kernels depend on the image alone; building their permutohedral lattice costs
    about as much as ten mean-field iterations over a few labels, so it is built once here and
    every unary reuses it (the ignore band of pseudo labels runs the CRF at two thresholds).
    """
    _check_inputs(image, unaries)
    k, h, w = unaries[0].shape
    if k == 1:  # nothing to decide, and pydensecrf rejects a single label
        return [np.ones((1, h, w), dtype=np.float32) for _ in unaries]
    if params.scale == 1:
        return _mean_field(image, unaries, params)
    small = (max(1, round(w * params.scale)), max(1, round(h * params.scale)))
    # np.array: pydensecrf needs a writable buffer; the kernels' widths are in the smaller image's px
    shrunk = _mean_field(np.array(Image.fromarray(image).resize(small, Image.BILINEAR)),
                         [_resize(p, small, Image.BOX) for p in unaries],
                         dataclasses.replace(params, gaussian_sxy=params.gaussian_sxy * params.scale,
                                             bilateral_sxy=params.bilateral_sxy * params.scale))
    return [_resize(q, (w, h), Image.BILINEAR) for q in shrunk]


def _resize(maps: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """(K, H, W) float maps resized channel by channel to ``size`` = (width, height)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(m, np.float32)).resize(size, resample))
                     for m in maps])


def _mean_field(image: np.ndarray, unaries: Sequence[np.ndarray], params: CRFParams) -> list[np.ndarray]:
    """The CRF of ``dense_crf_many`` at the image's own resolution."""
    k, h, w = unaries[0].shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)
    refined = []
    for probs in unaries:
        unary = -np.log(np.clip(probs, _MIN_PROB, None)).reshape(k, h * w)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        refined.append(np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w))
    return refined


def _check_inputs(image: np.ndarray, unaries: Sequence[np.ndarray]) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf needs an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if not unaries:
        raise ValueError("dense_crf_many needs at least one probability map")
    for probs in unaries:
        if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] != unaries[0].shape[0]:
            raise ValueError(f"probabilities {probs.shape} do not match the image {image.shape[:2]} "
                             f"(or each other: {unaries[0].shape[0]} labels)")
