"""Fully connected CRF (Kraehenbuehl and Koltun) over any number of labels, via pydensecrf2.

Cost grows with the number of labels, so callers pass only the labels that can occur in the
image (present classes plus background) rather than the whole class list.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pydensecrf.densecrf as dcrf

from stages.errors import InputError

_MIN_PROB = 1e-8


@dataclass(frozen=True)
class CRFParams:
    """Mean-field iterations and the two pairwise kernels (positions in px, colours in 0..255)."""

    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


def add_crf_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True) -> None:
    """``--iterations``, ``--gaussian-sxy``, ... : one flag per ``CRFParams`` field, the same in
    every stage that runs the CRF (the workflow passes the config's ``crf`` mapping as flags)."""
    for name, kind in typing.get_type_hints(CRFParams).items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, required=required,
                            help=None if required else "dense CRF parameter")


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
