"""The embedded toy data set: procedurally drawn, in VOC layout, made in seconds on a CPU.

It exists so that every method in the pipeline has a real problem to fix on a laptop, so it
copies the ways in which real weakly supervised segmentation is hard rather than being easy:

- Classes are shape families (disc, square, triangle, ring, ...). Body colours come from one
  hue circle where neighbouring classes' hue distributions overlap, so colour alone does not
  tell the class.
- Every object carries a *discriminative mark*: a square patch (15 to 25% of the object's area,
  at a random place inside it) with a class-specific pattern (stripes, checks, dots, rings,
  cross-hatch, zigzag) in a class-specific colour pair. A classifier can name the class from the
  mark alone, which is exactly why its CAM tends to light up the mark and not the whole shape.
- Context: the first few classes have a typical background texture band (a "water", "grass" or
  "brick" strip, like boats on water). The band appears with the class 80% of the time and in 15%
  of other images, so CAMs leak into it while it is still background in the masks.
- Backgrounds are cluttered: a smooth random colour field, random stripes, blurred blobs whose
  colours overlap the objects', and pixel noise.
- 1 to 3 objects per image (occluding each other a little), image sides drawn independently in
  [min_size, max_size] and never equal, so images are non-square and vary in size.
- Masks carry the class inside objects and 255 on a band where the label changes (a pixel whose
  3x3 neighbourhood holds another label), i.e. about 2 px across every boundary, as in VOC.
- Scribbles (Scribbles/<id>.png): one skeleton stroke inside each eroded object and two curves in
  the eroded background, 255 elsewhere (stages.data.scribbles.synthesize_scribbles).

Determinism: each image draws from its own generator seeded with (seed, split, index), so the
same arguments give byte-identical files, and changing one split's size leaves the other
split's images unchanged. JPEGs are written at fixed quality without optimisation passes.
``num_classes`` counts object classes; background is added as class 0.
"""
from __future__ import annotations

import colorsys
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from stages.data.index import DatasetIndex
from stages.data.scribbles import erode, synthesize_scribbles
from stages.errors import InputError
from stages.io.atomic import atomic_path, write_text
from stages.io.label_png import IGNORE, write_label
from stages.runtime.pools import pool_context
from stages.runtime.progress import progress_bar

JPEG_QUALITY = 92
SPLIT_CODES = {"train_aug": 1, "val": 2}
ID_PREFIX = {"train_aug": "ta", "val": "va"}
CONTEXT_PROBABILITY = 0.8       # context band drawn when its class is in the image
STRAY_CONTEXT_PROBABILITY = 0.15  # some context band drawn in any other image
OBJECT_COUNT_PROBS = (0.5, 0.35, 0.15)  # 1, 2 or 3 objects

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, radius: float = 0.95,
                     phase: float = -np.pi / 2) -> np.ndarray:
    rho, phi = np.hypot(u, v), np.arctan2(v, u) - phase
    sector = 2 * np.pi / sides
    local = np.mod(phi, sector) - sector / 2
    return rho * np.cos(local) <= radius * np.cos(np.pi / sides)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    phi = np.arctan2(v, u) + np.pi / 2
    tip = np.abs(np.mod(5 * phi / (2 * np.pi), 1.0) - 0.5) * 2
    return np.hypot(u, v) <= 0.42 + 0.55 * tip


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = 1.25 * u, -1.25 * v + 0.15
    return (x ** 2 + y ** 2 - 1) ** 3 - x ** 2 * y ** 3 <= 0


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _chebyshev(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v))


# Shape families in class order; object coordinates are normalised to a circumradius of ~1.
SHAPES: dict[str, ShapeFn] = {
    "disc": lambda u, v: np.hypot(u, v) <= 0.95,
    "square": lambda u, v: _chebyshev(u, v) <= 0.72,
    "triangle": lambda u, v: _regular_polygon(u, v, 3, 1.0),
    "ring": lambda u, v: (np.hypot(u, v) <= 0.95) & (np.hypot(u, v) >= 0.5),
    "cross": lambda u, v: _box(u, v, -0.3, 0.3, -0.95, 0.95) | _box(u, v, -0.95, 0.95, -0.3, 0.3),
    "star": _star,
    "heart": _heart,
    "crescent": lambda u, v: (np.hypot(u, v) <= 0.95) & (np.hypot(u - 0.5, v) > 0.7),
    "diamond": lambda u, v: np.abs(u) / 0.7 + np.abs(v) <= 0.98,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6, phase=0.0),
    "arrow": lambda u, v: _box(u, v, -0.95, 0.15, -0.22, 0.22) | ((u >= 0.1) & (np.abs(v) <= 0.8 - 0.85 * u)),
    "ellipse": lambda u, v: (u / 0.95) ** 2 + (v / 0.5) ** 2 <= 1,
    "tee": lambda u, v: _box(u, v, -0.9, 0.9, -0.9, -0.45) | _box(u, v, -0.25, 0.25, -0.9, 0.9),
    "ell": lambda u, v: _box(u, v, -0.8, -0.3, -0.9, 0.9) | _box(u, v, -0.8, 0.8, 0.4, 0.9),
    "hourglass": lambda u, v: (np.abs(v) <= 0.9) & (np.abs(u) <= 0.12 + 0.75 * np.abs(v)),
    "frame": lambda u, v: (_chebyshev(u, v) <= 0.8) & (_chebyshev(u, v) > 0.45),
    "flower": lambda u, v: np.hypot(u, v) <= 0.35 + 0.6 * np.abs(np.cos(2 * np.arctan2(v, u))),
    "halfdisc": lambda u, v: (np.hypot(u, v) <= 0.95) & (v <= 0.2),
    "pentagon": lambda u, v: _regular_polygon(u, v, 5),
    "bar": lambda u, v: _box(u, v, -0.95, 0.95, -0.32, 0.32),
}
MAX_CLASSES = len(SHAPES)
MARK_PATTERNS = ("stripes", "checks", "dots", "rings", "hatch", "zigzag")
CONTEXTS = ("water", "grass", "brick")


@dataclass(frozen=True)
class _Object:
    cls: int
    mask: np.ndarray
    u: np.ndarray  # object coordinates in pixels (rotated frame), for the mark pattern
    v: np.ndarray


def class_names(num_classes: int) -> list[str]:
    """Background plus the first ``num_classes`` shape families."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise InputError(f"toy num_classes must be 1..{MAX_CLASSES}, got {num_classes}")
    return ["background", *list(SHAPES)[:num_classes]]


def context_of(num_classes: int) -> dict[int, str]:
    """Which classes have a typical background context (about one class in three, at most 3)."""
    count = min(len(CONTEXTS), max(1, num_classes // 3))
    return {cls: CONTEXTS[cls - 1] for cls in range(1, count + 1)}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _mark_colours(cls: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright colour on black or white, spread over the hue circle by the golden ratio."""
    bright = _hsv(cls * 0.618034, 1.0, 1.0)
    dark = np.zeros(3, np.float32) if cls % 2 else np.full(3, 255, np.float32)
    return bright, dark


def _mark_pattern(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    kind = MARK_PATTERNS[(cls - 1) % len(MARK_PATTERNS)]
    variant = (cls - 1) // len(MARK_PATTERNS)
    period = 4.0 + variant
    angle = variant * np.pi / 4
    a = u * np.cos(angle) + v * np.sin(angle)
    b = -u * np.sin(angle) + v * np.cos(angle)
    if kind == "stripes":
        return np.sin(2 * np.pi * a / period) > 0
    if kind == "checks":
        return (np.floor(a / period) + np.floor(b / period)) % 2 == 0
    if kind == "dots":
        return np.hypot(np.mod(a, period) - period / 2, np.mod(b, period) - period / 2) < period / 3
    if kind == "rings":
        return np.floor(np.hypot(a, b) / (period / 2)) % 2 == 0
    if kind == "hatch":
        return (np.abs(np.sin(np.pi * a / period)) < 0.4) | (np.abs(np.sin(np.pi * b / period)) < 0.4)
    return np.sin(2 * np.pi * (b + period / 2 * np.abs(np.mod(a / period, 2) - 1)) / period) > 0


def _image_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    while True:
        h, w = (int(x) for x in rng.integers(min_size, max_size + 1, size=2))
        if h != w or min_size == max_size:
            return h, w


def _clutter(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    grid = rng.uniform(30, 225, size=(3, 4, 3)).astype(np.uint8)
    canvas = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        x0, x1 = rng.uniform(-0.2, 1.2, 2) * w
        y0, y1 = rng.uniform(-0.2, 1.2, 2) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(3, 11, 2)
        colour = tuple(int(c) for c in _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.45, 0.95)))
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)


def _context_texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "water":
        wave = np.sin(2 * np.pi * (yy / 5.0 + 0.3 * np.sin(2 * np.pi * xx / 23.0 + rng.uniform(0, 6.3))))
        base, amp = np.array([40, 95, 175], np.float32), np.array([25, 30, 40], np.float32)
        return base + wave[..., None] * amp
    if kind == "grass":
        streaks = rng.normal(0, 1, size=(h, w)).astype(np.float32)
        blurred = Image.fromarray(np.clip(streaks * 60 + 128, 0, 255).astype(np.uint8))
        streaks = (np.asarray(blurred.filter(ImageFilter.BoxBlur(1)), np.float32) - 128) / 40
        base, amp = np.array([70, 145, 50], np.float32), np.array([20, 40, 15], np.float32)
        return base + streaks[..., None] * amp
    # brick: running-bond courses with light mortar lines
    course = np.floor(yy / 6)
    mortar = (np.mod(yy, 6) < 1) | (np.mod(xx + 6 * np.mod(course, 2), 12) < 1)
    brick = np.array([150, 65, 45], np.float32) + rng.normal(0, 10, size=(h, w, 1)).astype(np.float32)
    return np.where(mortar[..., None], np.array([200, 195, 185], np.float32), brick)


def _context_band(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A strip over the lower part of the image with a wavy top edge; returns it and its top."""
    top = rng.uniform(0.45, 0.7) * h
    xx = np.arange(w, dtype=np.float32)
    edge = top + rng.uniform(1, 4) * np.sin(2 * np.pi * xx / rng.uniform(20, 50) + rng.uniform(0, 6.3))
    return np.arange(h, dtype=np.float32)[:, None] >= edge[None, :], top


def _place_object(cls: int, h: int, w: int, rng: np.random.Generator,
                  centre_y: float | None) -> _Object:
    radius = rng.uniform(0.2, 0.33) * min(h, w)
    cx = rng.uniform(0.7 * radius, w - 0.7 * radius)
    cy = centre_y if centre_y is not None else rng.uniform(0.7 * radius, h - 0.7 * radius)
    theta = rng.uniform(0, 2 * np.pi)
    stretch = rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) * stretch
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / stretch
    mask = SHAPES[list(SHAPES)[cls - 1]](u / radius, v / radius)
    return _Object(cls, mask, u, v)


def _paint_object(image: np.ndarray, obj: _Object, num_classes: int, rng: np.random.Generator) -> None:
    """Shaded body in a class-biased but overlapping colour, then the class's mark patch."""
    hue = (obj.cls - 1) / num_classes + rng.normal(0, 0.6 / num_classes)
    body = _hsv(hue, rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.95))
    light = rng.uniform(0, 2 * np.pi)
    extent = max(np.abs(obj.u[obj.mask]).max(), np.abs(obj.v[obj.mask]).max(), 1.0)
    shade = 1.0 + 0.25 * (obj.u * np.cos(light) + obj.v * np.sin(light)) / extent
    image[obj.mask] = body * shade[obj.mask][:, None]

    area = int(obj.mask.sum())
    side = np.sqrt(rng.uniform(0.15, 0.25) * area)
    half = max(1, int(side / 2))
    inside = erode(obj.mask, half)
    ys, xs = np.nonzero(inside if inside.any() else obj.mask)
    pick = int(rng.integers(0, len(ys)))
    mu, mv = obj.u[ys[pick], xs[pick]], obj.v[ys[pick], xs[pick]]
    patch = obj.mask & (np.abs(obj.u - mu) <= side / 2) & (np.abs(obj.v - mv) <= side / 2)
    bright, dark = _mark_colours(obj.cls)
    on = _mark_pattern(obj.cls, obj.u - mu, obj.v - mv)
    image[patch] = np.where(on[patch][:, None], bright, dark)


def _boundary_band(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds another label (edges replicated)."""
    p = np.pad(label, 1, mode="edge")
    h, w = label.shape
    band = np.zeros(label.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            band |= p[dy:dy + h, dx:dx + w] != label
    return band


def _object_classes(num_classes: int, rng: np.random.Generator) -> list[int]:
    count = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS)) + 1
    return [int(c) for c in rng.integers(1, num_classes + 1, size=count)]


def _place_objects(classes: list[int], h: int, w: int, rng: np.random.Generator,
                   context_rows: dict[int, float]) -> list[_Object]:
    """Objects that overlap each other by at most a quarter of either one's area.

    An object of a class whose context band is drawn sits on the band's top edge (a boat on
    the water line). An object that finds no place in 20 tries is left out.
    """
    objects: list[_Object] = []
    for cls in classes:
        for _attempt in range(20):
            centre_y = None
            if cls in context_rows:
                centre_y = context_rows[cls] + rng.uniform(-0.05, 0.1) * h
            obj = _place_object(cls, h, w, rng, centre_y)
            area = obj.mask.sum()
            if area < 0.02 * h * w:
                continue
            if all((obj.mask & o.mask).sum() <= 0.25 * min(area, o.mask.sum()) for o in objects):
                objects.append(obj)
                break
    return objects


@dataclass(frozen=True)
class ToySample:
    image: np.ndarray      # HxWx3 uint8
    mask: np.ndarray       # HxW uint8, 255 band
    scribbles: np.ndarray  # HxW uint8, 255 off the strokes
    labels: list[int]      # foreground classes present in the mask


def make_sample(num_classes: int, min_size: int, max_size: int, rng: np.random.Generator) -> ToySample:
    """One image with its mask, scribbles and image-level labels."""
    h, w = _image_size(rng, min_size, max_size)
    image = _clutter(h, w, rng)
    classes = _object_classes(num_classes, rng)
    context_rows: dict[int, float] = {}
    for cls, kind in context_of(num_classes).items():
        if cls in classes and rng.random() < CONTEXT_PROBABILITY:
            band, top = _context_band(h, w, rng)
            image[band] = _context_texture(kind, h, w, rng)[band]
            context_rows[cls] = top
    if not context_rows and rng.random() < STRAY_CONTEXT_PROBABILITY:
        band, _ = _context_band(h, w, rng)
        kind = CONTEXTS[int(rng.integers(0, len(CONTEXTS)))]
        image[band] = _context_texture(kind, h, w, rng)[band]

    objects: list[_Object] = []
    while not objects:
        objects = _place_objects(classes, h, w, rng, context_rows)
    label = np.zeros((h, w), dtype=np.uint8)
    instances = np.zeros((h, w), dtype=np.uint8)
    for k, obj in enumerate(objects, start=1):
        _paint_object(image, obj, num_classes, rng)
        label[obj.mask] = obj.cls
        instances[obj.mask] = k
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    image_u8 = np.clip(image, 0, 255).astype(np.uint8)

    mask = label.copy()
    mask[_boundary_band(label)] = IGNORE
    scribbles = synthesize_scribbles(mask, rng, instances)
    present = sorted(int(c) for c in np.unique(mask) if c not in (0, IGNORE))
    return ToySample(image_u8, mask, scribbles, present)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=JPEG_QUALITY, optimize=False)


@dataclass(frozen=True)
class _SampleWriter:
    """Draws one image of the set and writes its files; a class, so that pool workers can take it.
    Each image has its own seed, so the set is the same on any number of workers."""

    root: Path
    num_classes: int
    min_size: int
    max_size: int
    seed: int

    def __call__(self, job: tuple[str, int, str]) -> list[int]:
        split, i, image_id = job
        sample = make_sample(self.num_classes, self.min_size, self.max_size,
                             np.random.default_rng([self.seed, SPLIT_CODES[split], i]))
        _write_jpeg(self.root / "JPEGImages" / f"{image_id}.jpg", sample.image)
        write_label(self.root / "SegmentationClass" / f"{image_id}.png", sample.mask)
        write_label(self.root / "Scribbles" / f"{image_id}.png", sample.scribbles)
        return sample.labels


def generate_toy(root: str | os.PathLike, *, num_classes: int, num_train_aug: int, num_train: int,
                 num_val: int, min_size: int, max_size: int, seed: int,
                 progress: bool = False, workers: int = 1) -> DatasetIndex:
    """Write the toy set in VOC layout under ``root`` and return its index (not saved); ``workers``
    processes draw the images."""
    if num_train > num_train_aug:
        raise InputError(f"toy num_train ({num_train}) must not exceed num_train_aug ({num_train_aug})")
    if min_size > max_size:
        raise InputError(f"toy min_size ({min_size}) must not exceed max_size ({max_size})")
    names = class_names(num_classes)
    root = Path(root).resolve()
    counts = {"train_aug": num_train_aug, "val": num_val}
    jobs = [(split, i, f"{ID_PREFIX[split]}{i:05d}") for split, n in counts.items() for i in range(n)]
    writer = _SampleWriter(root, num_classes, min_size, max_size, seed)
    splits: dict[str, list[str]] = {split: [] for split in counts}
    labels: dict[str, list[int]] = {}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(pool_context(__name__).Pool(workers))
            drawn = pool.imap(writer, jobs, chunksize=8)
        else:
            drawn = map(writer, jobs)
        for (split, _, image_id), present in zip(jobs, progress_bar(drawn, total=len(jobs), desc="toy images",
                                                                     disable=not progress)):
            splits[split].append(image_id)
            labels[image_id] = present
    splits["train"] = splits["train_aug"][:num_train]

    for split, ids in splits.items():
        write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    write_text(root / "image_labels.json",
               json.dumps({i: [names[c] for c in labels[i]] for i in sorted(labels)}, indent=1))
    write_text(root / "classes.txt", "".join(f"{n}\n" for n in names))
    return DatasetIndex(name="toy", root=root, classes=names,
                        splits={k: splits[k] for k in ("train_aug", "train", "val")},
                        labels=labels, scribble_dir="Scribbles")
