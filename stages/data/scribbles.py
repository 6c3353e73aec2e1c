"""Scribble label maps: drawn from ScribbleSup XML, or synthesised from a label map.

A scribble map has the size of its image, a class index on stroke pixels and 255 (ignore)
everywhere else, so it reads like any other label PNG. ScribbleSup's VOC scribbles are
polylines drawn 3 px wide; about 3% of the pixels end up labelled. When no real scribbles
exist, strokes are synthesised from a label map -- a ground-truth mask (the toy set, the
``synthetic`` scribble source) or the confident pixels of pseudo labels (the ``pseudo`` source):
the skeleton of each eroded object (clipped to the object) and a few free curves in the eroded
background. Morphology comes from scipy.ndimage (erosion, dilation, connected components) and
scikit-image (skeletons).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.morphology import skeletonize

from stages.errors import InputError
from stages.io.label_png import IGNORE

STROKE_WIDTH = 3

# ScribbleSup tags that differ from the VOC class names.
SCRIBBLESUP_ALIASES = {
    "plane": "aeroplane", "bike": "bicycle", "table": "diningtable", "plant": "pottedplant",
    "monitor": "tvmonitor", "tv": "tvmonitor",
}


def _square(radius: int) -> np.ndarray:
    return np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square erosion; pixels beyond the border count as outside the mask, so a shape cut by
    the image edge is eroded from the edge too (a stroke never hugs the border)."""
    m = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return m.copy()
    return ndimage.binary_erosion(m, _square(radius), border_value=0)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation."""
    m = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return m.copy()
    return ndimage.binary_dilation(m, _square(radius))


def regions(label_map: np.ndarray, instances: np.ndarray | None = None,
            min_area: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(class, pixels) of every object of a label map: each instance of ``instances`` when given
    (0 = none; its class is the most common label on it), else each 8-connected component of a
    foreground class. Regions smaller than ``min_area`` pixels are skipped."""
    valid = (label_map != IGNORE) & (label_map != 0)
    if instances is not None:
        for inst in np.unique(instances):
            region = (instances == inst) & valid
            if inst != 0 and region.sum() >= min_area:
                yield int(np.bincount(label_map[region]).argmax()), region
        return
    for cls in np.unique(label_map[valid]):
        components, count = ndimage.label(label_map == cls, structure=_square(1))
        for k in range(1, count + 1):
            region = components == k
            if region.sum() >= min_area:
                yield int(cls), region


def _draw_polyline(shape_hw: tuple[int, int], points: list[tuple[float, float]], width: int) -> np.ndarray:
    canvas = Image.new("L", (shape_hw[1], shape_hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    if len(points) == 1:
        points = points * 2
    draw.line(points, fill=1, width=width, joint="curve")
    return np.asarray(canvas, dtype=bool)


def object_stroke(region: np.ndarray, rng: np.random.Generator, inset: int = 2,
                  core_only: bool = False) -> np.ndarray:
    """A thin stroke inside ``region``: its skeleton after erosion, plus a chord if that is short.

    Compact shapes (a disc, a square) thin to almost a point, unlike a person's scribble that
    crosses the object, so a chord through the centroid at a random angle tops them up. A region
    too thin to survive the erosion is stroked whole, as a person would, unless ``core_only``.
    """
    inner = erode(region, inset)
    if not inner.any() and not core_only:
        inner = region.astype(bool)
    if not inner.any():
        return inner
    stroke = skeletonize(inner)
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


def synthesize_scribbles(label_map: np.ndarray, rng: np.random.Generator,
                         instances: np.ndarray | None = None, background_count: int = 2,
                         min_area: int = 1, core_only: bool = False) -> np.ndarray:
    """Scribbles from a label map (a mask, or pseudo labels whose 255 marks unsure pixels).

    Each object (``regions``) gets one skeleton stroke carrying its class; the background gets
    ``background_count`` curves; everything else is 255. Strokes never cross into an ignored or
    differently labelled pixel; with ``core_only`` (pseudo labels) they stay inside the eroded
    labelled pixels of their class, and an object with no such core gets none.
    """
    out = np.full(label_map.shape, IGNORE, dtype=np.uint8)
    out[background_strokes(label_map == 0, rng, background_count)] = 0
    for cls, region in regions(label_map, instances, min_area):
        out[object_stroke(region, rng, core_only=core_only)] = cls
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
        raise InputError(f"{xml_path}: cannot read scribble XML ({exc})") from exc
    out = np.full(shape_hw, IGNORE, dtype=np.uint8)
    for polygon in root.iter("polygon"):
        tag = (polygon.findtext("tag") or "").strip().lower()
        name = SCRIBBLESUP_ALIASES.get(tag, tag)
        if name not in class_index:
            raise InputError(f"{xml_path}: unknown scribble tag {tag!r} "
                             f"(known: {sorted(class_index)} and {sorted(SCRIBBLESUP_ALIASES)})")
        try:
            points = [(float(p.findtext("X")), float(p.findtext("Y"))) for p in polygon.iter("point")]
        except (TypeError, ValueError) as exc:
            raise InputError(f"{xml_path}: bad point in a {tag!r} scribble ({exc})") from exc
        if not points:
            continue
        out[_draw_polyline(shape_hw, points, STROKE_WIDTH)] = class_index[name]
    return out
