"""Dense CRF: it cleans a noisy labelling of a two-colour image, for any number of labels."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from stages.errors import InputError
from stages.labels.crf import CRFParams, add_crf_arguments, crf_params_from, dense_crf, dense_crf_many

PARAMS = CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                   bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10)


def iou(pred: np.ndarray, truth: np.ndarray, cls: int) -> float:
    inter = np.sum((pred == cls) & (truth == cls))
    return inter / np.sum((pred == cls) | (truth == cls))


def two_colour_scene(rng: np.random.Generator, size: int = 48):
    """Red square on blue, and probabilities that favour the truth only slightly, with 30% flipped."""
    truth = np.zeros((size, size), dtype=np.int64)
    truth[12:36, 10:40] = 1
    image = np.where(truth[..., None] == 1, [200, 30, 30], [30, 40, 190]).astype(np.uint8)
    confident = np.where(rng.random(truth.shape) < 0.3, 1 - truth, truth)
    fg = np.where(confident == 1, 0.62, 0.38)
    return image, truth, np.stack([1 - fg, fg]).astype(np.float32)


def test_crf_improves_noisy_labels():
    image, truth, probs = two_colour_scene(np.random.default_rng(0))
    noisy = probs.argmax(0)
    refined = dense_crf(image, probs, PARAMS)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    crf_labels = refined.argmax(0)
    for cls in (0, 1):
        assert iou(crf_labels, truth, cls) > iou(noisy, truth, cls) + 0.2
    assert iou(crf_labels, truth, 1) > 0.95


def test_any_number_of_labels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)
    probs = rng.random((5, 10, 14)).astype(np.float32)
    probs /= probs.sum(0)
    assert dense_crf(image, probs, PARAMS).shape == (5, 10, 14)
    assert np.all(dense_crf(image, probs[:1] * 0 + 1, PARAMS) == 1)  # a single label is certain


def test_non_contiguous_image_is_accepted():
    image, truth, probs = two_colour_scene(np.random.default_rng(2))
    flipped = image[:, ::-1]  # a view with negative strides
    refined = dense_crf(flipped, probs[:, :, ::-1], PARAMS)
    assert iou(refined.argmax(0), truth[:, ::-1], 1) > 0.95


@pytest.mark.parametrize("image, probs, message", [
    (np.zeros((4, 4, 3), np.float32), np.ones((2, 4, 4)), "uint8"),
    (np.zeros((4, 4), np.uint8), np.ones((2, 4, 4)), "HxWx3"),
    (np.zeros((4, 4, 3), np.uint8), np.ones((2, 4, 5)), "do not match"),
])
def test_bad_inputs(image, probs, message):
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probs, PARAMS)


def test_shared_lattice_gives_what_separate_crfs_give():
    """dense_crf_many builds the pairwise lattice once; the result must not depend on that."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    maps = [rng.random((3, 12, 16)).astype(np.float32) for _ in range(3)]
    maps = [m / m.sum(0, keepdims=True) for m in maps]
    shared = dense_crf_many(image, maps, PARAMS)
    for probs, refined in zip(maps, shared):
        np.testing.assert_array_equal(refined, dense_crf(image, probs, PARAMS))
    with pytest.raises(ValueError, match="do not match"):
        dense_crf_many(image, [maps[0], maps[0][:2]], PARAMS)


def test_a_half_size_crf_labels_like_the_full_one():
    """scale 0.5 runs on a quarter of the pixels (kernels' widths halved) and comes back at full size."""
    image, truth, probs = two_colour_scene(np.random.default_rng(4), size=96)
    full = dense_crf(image, probs, PARAMS)
    half = dense_crf(image, probs, dataclasses.replace(PARAMS, scale=0.5))
    assert half.shape == probs.shape and half.dtype == np.float32
    np.testing.assert_allclose(half.sum(0), 1.0, atol=1e-4)
    assert np.mean(half.argmax(0) == full.argmax(0)) > 0.98
    assert iou(half.argmax(0), truth, 1) > 0.95
    assert not np.array_equal(half, full)  # it did run on the smaller copy


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5])
def test_a_scale_outside_0_1_is_refused(scale):
    with pytest.raises(InputError, match="scale must be in"):
        dataclasses.replace(PARAMS, scale=scale)


def test_the_scale_flag_may_be_left_out():
    parser = argparse.ArgumentParser()
    add_crf_arguments(parser)
    flags = "--iterations 5 --gaussian-sxy 3 --gaussian-compat 3 --bilateral-sxy 50 --bilateral-srgb 5"
    args = parser.parse_args((flags + " --bilateral-compat 10").split())
    assert crf_params_from(args).scale == 1.0
    assert crf_params_from(parser.parse_args((flags + " --bilateral-compat 10 --scale 0.5").split())).scale == 0.5
    with pytest.raises(SystemExit):  # the other fields stay required
        parser.parse_args(flags.split())
