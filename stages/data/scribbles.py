"""Scribble label maps: drawn from ScribbleSup XML, or synthesised from a mask.

A scribble map has the size of its image, a class index on stroke pixels and 255 (ignore)
everywhere else, so it reads like any other label PNG. ScribbleSup's VOC scribbles are
polylines drawn 3 px wide; about 3% of the pixels end up labelled. When no real scribbles
exist (the toy set), strokes are synthesised from the mask: the skeleton of each eroded
object (clipped to the object) and a few free curves in the eroded background.

Binary morphology lives here, in plain numpy, because scipy is not a dependency of the
pipeline and the few operations needed are short.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from stages.io.label_png import IGNORE

STROKE_WIDTH = 3

# ScribbleSup tags that differ from the VOC class names.
SCRIBBLESUP_ALIASES = {
    "plane": "aeroplane", "bike": "bicycle", "table": "diningtable", "plant": "pottedplant",
    "monitor": "tvmonitor", "tv": "tvmonitor",
}


def _shift_reduce(mask: np.ndarray, radius: int, axis: int, reduce_and: bool) -> np.ndarray:
    """1-D min (AND) or max (OR) filter of width 2*radius+1; outside the image counts as False."""
    out = mask.copy()
    n = mask.shape[axis]
    for d in range(1, radius + 1):
        if d >= n:
            if reduce_and:
                out[:] = False
            break
        fwd = [slice(None)] * 2
        bwd = [slice(None)] * 2
        fwd[axis], bwd[axis] = slice(d, None), slice(None, -d)
        shifted_fwd = np.zeros_like(mask)
        shifted_bwd = np.zeros_like(mask)
        shifted_fwd[tuple(bwd)] = mask[tuple(fwd)]
        shifted_bwd[tuple(fwd)] = mask[tuple(bwd)]
        if reduce_and:
            out &= shifted_fwd & shifted_bwd
        else:
            out |= shifted_fwd | shifted_bwd
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square erosion (separable); pixels beyond the border count as outside the mask."""
    m = mask.astype(bool)
    if radius <= 0:
        return m.copy()
    return _shift_reduce(_shift_reduce(m, radius, 0, True), radius, 1, True)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation (separable)."""
    m = mask.astype(bool)
    if radius <= 0:
        return m.copy()
    return _shift_reduce(_shift_reduce(m, radius, 0, False), radius, 1, False)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning to a one-pixel skeleton, each sub-iteration vectorised over the image."""
    img = mask.astype(np.uint8).copy()
    while True:
        changed = False
        for first_pass in (True, False):
            p = np.pad(img, 1)
            p2, p3, p4 = p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:]
            p5, p6, p7 = p[2:, 2:], p[2:, 1:-1], p[2:, :-2]
            p8, p9 = p[1:-1, :-2], p[:-2, :-2]
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            neighbours = p2 + p3 + p4 + p5 + p6 + p7 + p8 + p9
            transitions = sum(((a == 0) & (b == 1)).astype(np.uint8) for a, b in zip(ring, ring[1:]))
            if first_pass:
                side = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                side = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (img == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & side
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img.astype(bool)


def _draw_polyline(shape_hw: tuple[int, int], points: list[tuple[float, float]], width: int) -> np.ndarray:
    canvas = Image.new("L", (shape_hw[1], shape_hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    if len(points) == 1:
        points = points * 2
    draw.line(points, fill=1, width=width, joint="curve")
    return np.asarray(canvas, dtype=bool)


def object_stroke(region: np.ndarray, rng: np.random.Generator, inset: int = 2) -> np.ndarray:
    """A thin stroke inside ``region``: its skeleton after erosion, plus a chord if that is short.

    Compact shapes (a disc, a square) thin to almost a point, unlike a person's scribble that
    crosses the object, so a chord through the centroid at a random angle tops them up.
    """
    inner = erode(region, inset)
    if not inner.any():
        inner = region.astype(bool)
    if not inner.any():
        return inner
    stroke = thin(inner)
    ys, xs = np.nonzero(inner)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    if stroke.sum() < 0.6 * extent:
        cy, cx = ys.mean(), xs.mean()
        angle = rng.uniform(0, np.pi)
        dy, dx = np.sin(angle) * extent, np.cos(angle) * extent
        stroke |= _draw_polyline(region.shape, [(cx - dx, cy - dy), (cx + dx, cy + dy)], 1)
    return dilate(stroke, 1) & inner


def background_strokes(background: np.ndarray, rng: np.random.Generator, count: int,
                       inset: int = 3) -> np.ndarray:
    """A few smooth free curves (quadratic Bezier) clipped to the eroded background."""
    inner = erode(background, inset)
    out = np.zeros_like(inner)
    if not inner.any():
        return out
    ys, xs = np.nonzero(inner)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(count):
        picks = rng.integers(0, len(ys), size=3)
        ctrl = np.stack([xs[picks], ys[picks]], axis=1).astype(np.float64)
        curve = ((1 - t) ** 2) * ctrl[0] + 2 * (1 - t) * t * ctrl[1] + (t ** 2) * ctrl[2]
        out |= _draw_polyline(inner.shape, [tuple(p) for p in curve], STROKE_WIDTH)
    return out & inner


def synthesize_scribbles(mask: np.ndarray, instances: np.ndarray, rng: np.random.Generator,
                         background_count: int = 2) -> np.ndarray:
    """Scribbles from a ground-truth mask and an instance map (0 = background, k = k-th object).

    Each visible object gets one skeleton stroke carrying its class; the background gets
    ``background_count`` curves; everything else is 255.
    """
    out = np.full(mask.shape, IGNORE, dtype=np.uint8)
    valid = mask != IGNORE
    out[background_strokes((mask == 0) & valid, rng, background_count)] = 0
    for inst in np.unique(instances):
        if inst == 0:
            continue
        region = (instances == inst) & valid & (mask != 0)
        if not region.any():
            continue
        cls = int(np.bincount(mask[region]).argmax())
        out[object_stroke(region, rng)] = cls
    return out


def render_scribblesup_xml(xml_path: str | os.PathLike, shape_hw: tuple[int, int],
                           class_index: Mapping[str, int]) -> np.ndarray:
    """Draw one ScribbleSup XML file (``<polygon><tag>class</tag><point><X/><Y/></point>...``).

    Strokes are 3 px polylines in file order; ``class_index`` maps VOC names (background
    included) to indices, and ScribbleSup's short tags ("plane", "table", ...) are translated.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{xml_path}: cannot read scribble XML ({exc})") from exc
    out = np.full(shape_hw, IGNORE, dtype=np.uint8)
    for polygon in root.iter("polygon"):
        tag = (polygon.findtext("tag") or "").strip().lower()
        name = SCRIBBLESUP_ALIASES.get(tag, tag)
        if name not in class_index:
            raise ValueError(f"{xml_path}: unknown scribble tag {tag!r} "
                             f"(known: {sorted(class_index)} and {sorted(SCRIBBLESUP_ALIASES)})")
        try:
            points = [(float(p.findtext("X")), float(p.findtext("Y"))) for p in polygon.iter("point")]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{xml_path}: bad point in a {tag!r} scribble ({exc})") from exc
        if not points:
            continue
        out[_draw_polyline(shape_hw, points, STROKE_WIDTH)] = class_index[name]
    return out
