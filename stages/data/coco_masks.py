"""COCO instance annotations turned into one semantic mask per image, without pycocotools.

A COCO ``segmentation`` takes one of three forms, all decoded here with numpy alone (pycocotools
would be a compiled dependency for three small functions), each pixel for pixel as pycocotools
decodes it, since its masks are the ones the field trains and evaluates on:

- polygons, a list of ``[x1, y1, x2, y2, ...]`` lists, unioned. A pixel is in when its centre is
  inside, on pycocotools' grid of 1/5 pixel (its ``rleFrPoly``, re-implemented in numpy: an
  integer rectangle from 0 to 4 covers pixels 0..3). Drawing with PIL instead was tried: PIL cuts
  coordinates to whole pixels, and 6% of an average instance's pixels came out differently.
  Polygons of fewer than three points enclose nothing and are skipped;
- uncompressed RLE, ``{"counts": [n0, n1, ...], "size": [h, w]}``: run lengths of 0s and 1s
  alternately, starting with 0s, over the pixels in column-major order (down each column first);
- compressed RLE, the same runs with ``counts`` a string: each count is written in 5-bit groups,
  least significant first, one character each (``chr(48 + group)``, bit 0x20 set on every group
  but the last, bit 0x10 of the last one the sign), and every count after the third is stored as
  the difference to the count two places before it (runs of the same value change little).

Overlaps are resolved as alicranck/coco2voc does, the script that ToCo, DuPL and other COCO-WSSS
works point to for their masks: the instance with the smaller ``area`` wins a pixel (ties: the
one listed first), so a cup on a table stays a cup instead of vanishing under the table.
Crowd regions (``iscrowd: 1``, an RLE over a group of objects) are labelled with their category
like any instance and take part in the same rule, as there: their pixels do show that category.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from stages.errors import InputError

SCALE = 5  # pycocotools' polygon grid: 5 steps per pixel


def rle_string_counts(counts: str, where: str) -> list[int]:
    """The run lengths a compressed RLE string encodes (module docstring: the format)."""
    out: list[int] = []
    value = shift = 0
    for char in counts:
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise InputError(f"{where}: RLE counts string has character {char!r}, outside '0'..'o'")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift  # the last group's top bit is the sign
        if len(out) > 2:
            value += out[-2]
        out.append(value)
        value = shift = 0
    if shift:
        raise InputError(f"{where}: RLE counts string ends inside a number")
    return out


def decode_rle(rle: Mapping[str, Any], height: int, width: int, where: str) -> np.ndarray:
    """Boolean mask of an uncompressed (list) or compressed (string) RLE of an image's size."""
    if rle.get("size") != [height, width]:
        raise InputError(f"{where}: RLE size {rle.get('size')} is not the image's [height, width] "
                         f"[{height}, {width}]")
    counts = rle.get("counts")
    if isinstance(counts, str):
        counts = rle_string_counts(counts, where)
    if not isinstance(counts, list) or not all(isinstance(n, int) and n >= 0 for n in counts):
        raise InputError(f"{where}: RLE counts must be a string or a list of non-negative integers")
    if sum(counts) != height * width:
        raise InputError(f"{where}: RLE counts cover {sum(counts)} pixels, the image has {height * width}")
    runs = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
    return runs.reshape((height, width), order="F")


def _outline_points(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polygon's outline walked on a 5x finer integer grid, one point per step along the
    longer axis of each edge, rounding the other coordinate, each edge from its first vertex."""
    x = np.trunc(SCALE * xy[0::2] + 0.5).astype(np.int64)
    y = np.trunc(SCALE * xy[1::2] + 0.5).astype(np.int64)
    xs, ys, xe, ye = x, y, np.roll(x, -1), np.roll(y, -1)
    dx, dy = np.abs(xe - xs), np.abs(ye - ys)
    along_x = dx >= dy
    flip = np.where(along_x, xs > xe, ys > ye)  # interpolate from the lower end, walk from the first
    xs, xe = np.where(flip, xe, xs), np.where(flip, xs, xe)
    ys, ye = np.where(flip, ye, ys), np.where(flip, ys, ye)
    steps = np.maximum(dx, dy)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(along_x, (ye - ys) / dx, (xe - xs) / dy)
    slope = np.nan_to_num(slope)  # a zero-length edge: one point, whose rounding never matters
    edge = np.repeat(np.arange(len(xs)), steps + 1)
    d = np.arange(len(edge)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    t = np.where(flip[edge], steps[edge] - d, d)
    rounded = np.trunc(np.where(along_x, ys, xs)[edge] + slope[edge] * t + 0.5).astype(np.int64)
    u = np.where(along_x[edge], xs[edge] + t, rounded)
    v = np.where(along_x[edge], rounded, ys[edge] + t)
    return u, v


def rasterise_polygon(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """One polygon's pixels by pycocotools' rule (``rleFrPoly``), which made the field's masks.

    Where the outline, walked on the fine grid, crosses a column's centre line, the pixels from
    the crossing down are toggled; a pixel is in when it has been toggled an odd
    number of times counting down its column. Thus a pixel is in when its centre is inside, up to
    the 1/5-pixel grid. Only the polygon's bounding box is counted: outside it nothing toggles.
    """
    mask = np.zeros((height, width), dtype=bool)
    u, v = _outline_points(xy)
    moved = np.flatnonzero(u[1:] != u[:-1]) + 1
    left = np.minimum(u[moved], u[moved - 1])
    column = (left - 2) // SCALE
    keep = ((left - 2) % SCALE == 0) & (column >= 0) & (column <= width - 1)
    if not keep.any():
        return mask
    column, top = column[keep], np.minimum(v[moved], v[moved - 1])[keep]
    row = np.ceil(np.clip((top + 0.5) / SCALE - 0.5, 0, height)).astype(np.int64)
    r0, c0 = row.min(), column.min()
    toggles = np.zeros((row.max() - r0 + 1, column.max() - c0 + 1), dtype=np.int32)
    np.add.at(toggles, (row - r0, column - c0), 1)
    mask[r0:row.max(), c0:column.max() + 1] = (np.cumsum(toggles, axis=0) % 2 == 1)[:-1]
    return mask


def rasterise_polygons(polygons: Sequence[Sequence[float]], height: int, width: int, where: str) -> np.ndarray:
    """Boolean union of COCO polygons (:func:`rasterise_polygon` each)."""
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) % 2 or not all(
                isinstance(v, (int, float)) for v in polygon):
            raise InputError(f"{where}: a polygon must be a flat list of x, y numbers")
        if len(polygon) >= 6:
            mask |= rasterise_polygon(np.asarray(polygon, dtype=np.float64), height, width)
    return mask


def instance_mask(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """The pixels of one annotation, whichever of the three forms its ``segmentation`` takes."""
    if isinstance(segmentation, list):
        return rasterise_polygons(segmentation, height, width, where)
    if isinstance(segmentation, dict):
        return decode_rle(segmentation, height, width, where)
    raise InputError(f"{where}: segmentation is neither a list of polygons nor an RLE object")


def semantic_mask(instances: Sequence[tuple[int, float, np.ndarray]], height: int, width: int) -> np.ndarray:
    """uint8 class map of (class index, area, pixels) instances: smaller area wins, ties the first.

    Painting from the largest instance to the smallest lets each smaller one overwrite; among
    equal areas the one listed first is painted last.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    by_area = sorted(range(len(instances)), key=lambda i: instances[i][1])  # stable: ties keep list order
    for i in reversed(by_area):
        label[instances[i][2]] = instances[i][0]
    return label
