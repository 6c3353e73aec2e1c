"""The results browser: a static page with one row per image and one column per thing made of it.

A researcher looks for failure cases across many images: where a refinement hurt, where one
variant loses a class, where the CAM lights the context. The page (``index.html``, the same for
every run, from ``browser_page.html``) reads ``data.js``: per row the image's classes and the
per-image IoU of every scored column; the pictures are small files beside it, a thumbnail (the
overlay blended over the image) and a view (image and overlay apart, for the opacity slider), so
the page and its data stay small and thumbnails load as they scroll into sight. Everything opens
from disk (``file://``): data in a script, not fetched, and nothing loaded from elsewhere.

Rows: the first ``max_images`` images of the CAM evaluation split (train: ground truth, CAMs,
pseudo labels) and of the evaluation split (val: ground truth, predictions). Per-image IoU is the
mean over the classes in the truth or the labels, from ``ConfusionMatrix``; an ignored (255)
pseudo-label pixel counts as background, as in eval_pseudo's ``miou``.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.cams.threshold import labels_at_threshold
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.cam_store import CamReader
from stages.io.label_png import IGNORE, colorize, read_label
from stages.metrics.confusion import ConfusionMatrix
from stages.runtime.pools import pool_context
from stages.runtime.progress import progress_bar

PAGE_TEMPLATE = Path(__file__).with_name("browser_page.html")
THUMB_BLEND = 0.55  # overlay share in a thumbnail: classes readable, the image still recognisable


@dataclass(frozen=True)
class LabelSource:
    """A column of label maps: a folder of ``<id>.png`` for the rows of one split."""

    key: str  # [A-Za-z0-9_]+: part of picture file names
    title: str
    split: str
    folder: Path
    abstains: bool = False  # may hold 255 (pseudo labels): IoU counts it as background


@dataclass(frozen=True)
class CamSource:
    """The CAM column: a CAM file of the train rows and the threshold its labels are cut at."""

    path: Path
    threshold: float
    split: str


def image_iou(gt: np.ndarray, labels: np.ndarray, num_classes: int, abstains: bool = False) -> float | None:
    """Mean IoU of one image over the classes in its truth or its labels (None if there are none)."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(gt, labels)
    value = (matrix.ignored_as(0) if abstains else matrix).miou()
    return None if np.isnan(value) else round(value, 4)


def _resized(array: np.ndarray, side: int, resample: int) -> Image.Image:
    im = Image.fromarray(array)
    scale = side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
    return im


class PictureWriter:
    """Writes a row's pictures: ``t/<row>_<part>.jpg`` (thumbnail) and ``v/<row>_<part>.*`` (view).

    File names are row numbers, not image ids, so that no id (spaces, non-ASCII) needs escaping
    in a URL.
    """

    def __init__(self, out_dir: Path, thumb_size: int, view_size: int) -> None:
        self.out_dir, self.thumb_size, self.view_size = out_dir, thumb_size, view_size
        for folder in ("t", "v"):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)

    def image(self, row: int, image: np.ndarray) -> None:
        _resized(image, self.thumb_size, Image.BILINEAR).save(self.out_dir / "t" / f"{row}_image.jpg", quality=85)
        _resized(image, self.view_size, Image.BILINEAR).save(self.out_dir / "v" / f"{row}_image.jpg", quality=90)

    def overlay(self, row: int, part: str, image: np.ndarray, overlay: np.ndarray, exact: bool) -> None:
        """``exact``: a label map, resized by nearest neighbour and kept lossless in the view."""
        resample = Image.NEAREST if exact else Image.BILINEAR
        blend = (1 - THUMB_BLEND) * image.astype(np.float32) + THUMB_BLEND * overlay.astype(np.float32)
        _resized(blend.astype(np.uint8), self.thumb_size, Image.BILINEAR).save(
            self.out_dir / "t" / f"{row}_{part}.jpg", quality=85)
        view = _resized(overlay, self.view_size, resample)
        if exact:
            view.save(self.out_dir / "v" / f"{row}_{part}.png", optimize=True)
        else:
            view.save(self.out_dir / "v" / f"{row}_{part}.jpg", quality=90)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A CAM in [0, 1] as jet colours (uint8 RGB), the colour map of the report's CAM panels."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.uint8)


def palette_hex(num_classes: int) -> dict[str, str]:
    """Class value -> CSS colour of the label maps (the VOC palette), 255 included."""
    values = [*range(num_classes), IGNORE]
    colours = colorize(np.array([values], dtype=np.uint8))[0]
    return {str(v): "#%02x%02x%02x" % tuple(int(c) for c in colour) for v, colour in zip(values, colours)}


def build_browser(index: DatasetIndex, out_dir: Path, *, cams: CamSource | None, labels: list[LabelSource],
                  val_split: str, max_images: int, thumb_size: int = 96, view_size: int = 480,
                  progress: bool = True, workers: int = 1) -> dict[str, int]:
    """Write the page, its data and its pictures into the empty folder ``out_dir``; returns counts.

    ``workers`` > 1 draws rows in that many processes (the page is a run's last job, alone on the
    machine); rows keep their order. A calling script then needs the ``__main__`` guard."""
    writer = PictureWriter(out_dir, thumb_size, view_size)
    train_split = cams.split if cams is not None else next((s.split for s in labels if s.split != val_split), None)
    columns = [{"key": "image", "title": "image", "kind": "image"},
               {"key": "gt", "title": "ground truth", "kind": "labels"}]
    if cams is not None:
        columns.append({"key": "cam", "title": f"CAMs (labels at {cams.threshold:.2f})", "kind": "cam",
                        "scored": True})
    columns += [{"key": s.key, "title": s.title, "kind": "labels", "scored": True} for s in labels]
    splits = [s for s in dict.fromkeys([train_split, val_split]) if s is not None]
    shown = [(split, image_id) for split in splits for image_id in index.ids(split)[:max_images]]
    jobs = [(n, split, image_id) for n, (split, image_id) in enumerate(shown)]
    context = (index, writer, cams, labels)
    with contextlib.ExitStack() as stack:
        if workers <= 1:
            _start_rows(*context)
            stack.callback(_stop_rows)
            made = map(_one_row, jobs)
        else:
            pool = stack.enter_context(pool_context(__name__).Pool(workers, _start_rows, context))
            made = pool.imap(_one_row, jobs, chunksize=4)
        rows = list(progress_bar(made, total=len(jobs), desc="browser rows", unit="img", disable=not progress))
    data = {"dataset": index.name, "classes": index.classes, "colours": palette_hex(index.num_classes),
            "columns": columns, "rows": rows, "splits": splits}
    (out_dir / "data.js").write_text("window.BROWSE_DATA = " + json.dumps(data, separators=(",", ":")) + ";\n",
                                     encoding="utf-8")
    shutil.copyfile(PAGE_TEMPLATE, out_dir / "index.html")
    return {"rows": len(rows), "pictures": sum(len(list((out_dir / d).iterdir())) for d in ("t", "v"))}


# What every row of this process needs, with its own handle on the CAM file (an HDF5 handle does
# not cross processes): set by _start_rows, in the calling process or in each pool worker.
_rows: dict = {}


def _start_rows(index: DatasetIndex, writer: PictureWriter, cams: CamSource | None,
                labels: list[LabelSource]) -> None:
    _rows.update(index=index, writer=writer, cams=cams, labels=labels,
                 reader=CamReader(cams.path) if cams is not None else None)


def _stop_rows() -> None:
    reader = _rows.pop("reader", None)
    if reader is not None:
        reader.close()


def _one_row(job: tuple[int, str, str]) -> dict:
    n, split, image_id = job
    return _row(_rows["index"], _rows["writer"], n, split, image_id, _rows["reader"], _rows["cams"],
                _rows["labels"])


def _row(index: DatasetIndex, writer: PictureWriter, n: int, split: str, image_id: str,
         reader: CamReader | None, cams: CamSource | None, labels: list[LabelSource]) -> dict:
    image = load_rgb(index.image_path(image_id))
    size = image.shape[:2]
    writer.image(n, image)
    row: dict = {"id": image_id, "split": split, "iou": {}, "parts": ["image"]}
    mask_path = index.mask_path(image_id, split)
    gt = read_label(mask_path) if mask_path.is_file() else None
    if gt is not None:
        _check_size(mask_path, gt, size)
        writer.overlay(n, "gt", image, colorize(gt), exact=True)
        row["parts"].append("gt")
    present = set(index.labels.get(image_id, []))
    if gt is not None:
        present |= {int(c) for c in np.unique(gt) if 0 < c < index.num_classes}
    row["classes"] = sorted(present)
    if reader is not None and cams is not None and split == cams.split:
        entry = reader.read(image_id)
        if entry.size != size:
            raise InputError(f"{reader.path}: CAMs of {image_id!r} are {entry.size}, the image is {size}")
        row["cams"] = [int(c) for c in entry.class_indices]
        for c, cam in zip(entry.class_indices, entry.cams):
            writer.overlay(n, f"cam{int(c)}", image, heat_colours(cam), exact=False)
        row["parts"].append("cam")
        if gt is not None:
            cut = labels_at_threshold(entry.cams, entry.class_indices, cams.threshold)
            row["iou"]["cam"] = image_iou(gt, cut, index.num_classes)
    for source in labels:
        if source.split != split:
            continue
        path = source.folder / f"{image_id}.png"
        label = read_label(path)
        _check_size(path, label, size)
        writer.overlay(n, source.key, image, colorize(label), exact=True)
        row["parts"].append(source.key)
        if gt is not None:
            row["iou"][source.key] = image_iou(gt, label, index.num_classes, abstains=source.abstains)
    return row


def _check_size(path: Path, label: np.ndarray, size: tuple[int, int]) -> None:
    if label.shape != size:
        raise InputError(f"{path}: size {label.shape} differs from its image's {size}")
