"""CAMs that other methods wrote, read into this project's CAM entries, and our CAMs as plain arrays.

Formats (``format`` of an ``imported`` refinement; docs/importing-cams.md):

- ``irn``: ``<id>.npy`` per image, a dictionary with ``keys`` (the present classes) and
  ``high_res`` (full-resolution maps, K x H x W; preferred) and/or ``cam`` (IRN's strided maps);
- ``seam``: ``<id>.npy`` per image, a dictionary class number -> H x W map (SEAM, MuSCLe, PSA);
- ``png``: one 8-bit grayscale PNG per class and image, ``<id>_<class>.png`` or
  ``<id>/<class>.png``, where ``<class>`` is a class name of the data set or a class number;
  values are divided by 255;
- ``array``: ``<id>.npy`` or ``<id>.npz`` (one array) per image, H x W x C, its channels named in
  order by a class list (what :func:`channels_last` writes, with ``classes.txt``).

Class numbers (dictionary keys, PNG names) count from the first foreground class by default
(``foreground``: IRN's and SEAM's ``0`` is aeroplane on VOC), or index the data set's class list
(``dataset``: background is 0). The dictionaries are pickles, which can run any code when
loaded; they are read by ``stages.io.restricted_pickle``, never by ``np.load(allow_pickle=True)``.
"""
from __future__ import annotations

import collections
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from stages.data.index import DatasetIndex
from stages.data.transforms import resize
from stages.errors import InputError, MissingEntryError, MissingInputError
from stages.io.cam_store import CamEntry, CamWriter
from stages.io.ids import check_id
from stages.io.image_files import open_image
from stages.io.restricted_pickle import load_pickled_npy

FORMATS = ("irn", "seam", "png", "array")
NUMBERINGS = ("foreground", "dataset")
CLASSES_FILE = "classes.txt"
# maps saved in float16 round a little past [0, 1]; more than this is another scale (normalize)
RANGE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ClassMap:
    """One class's map of one image and the file it came from, which every error names."""

    path: Path
    class_index: int  # into the data set's class list; 0 (background) is dropped
    values: np.ndarray  # (H, W)


class ForeignReader(ABC):
    """A folder of one format: which files hold an image's CAMs, and the maps in them."""

    suffixes: tuple[str, ...] = (".npy",)

    def __init__(self, folder: Path, classes: Sequence[str], numbering: str) -> None:
        if not folder.is_dir():
            raise MissingInputError(f"{folder}: folder of CAMs to import not found")
        self.folder = folder
        self.classes = list(classes)
        self.offset = 1 if numbering == "foreground" else 0

    def files(self, image_id: str) -> list[Path]:
        """The files holding ``image_id``'s CAMs; empty when it has none."""
        check_id(image_id, str(self.folder))
        return [p for p in (self.folder / f"{image_id}{s}" for s in self.suffixes) if p.is_file()][:1]

    @abstractmethod
    def maps(self, image_id: str) -> list[ClassMap]:
        """Every map the image's files hold, with the data set's index of its class."""

    def class_index(self, number: object, path: Path) -> int:
        """The data set's index of a class number written in a file (a key or a file name)."""
        if isinstance(number, (bool, np.bool_)) or not isinstance(number, (int, np.integer)):
            raise InputError(f"{path}: class key {number!r} is not a class number")
        index = int(number) + self.offset
        if number < 0 or index >= len(self.classes):
            numbering = "foreground" if self.offset else "dataset"
            raise InputError(f"{path}: class {number} is not a class of the data set ({numbering} numbering: "
                             f"0..{len(self.classes) - 1 - self.offset} for {self.classes[self.offset:]})")
        return index

    def _dictionary(self, path: Path) -> dict:
        obj = load_pickled_npy(path)
        if not isinstance(obj, dict):
            raise InputError(f"{path}: holds a {type(obj).__name__}, not a dictionary of CAMs")
        return obj


def _array(value: object, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: {what} is not a numeric array ({exc})") from exc


class IrnReader(ForeignReader):
    def maps(self, image_id: str) -> list[ClassMap]:
        (path,) = self.files(image_id)
        d = self._dictionary(path)
        name = "high_res" if "high_res" in d else "cam"
        if "keys" not in d or name not in d:
            raise InputError(f"{path}: an IRN CAM dictionary has 'keys' and 'high_res' or 'cam'; this one has "
                             f"{sorted(map(str, d))}")
        keys = np.asarray(d["keys"]).reshape(-1)
        cams = _array(d[name], path, f"{name!r}")
        if cams.ndim != 3 or cams.shape[0] != keys.size:
            raise InputError(f"{path}: {name!r} of shape {cams.shape} does not hold one map per key "
                             f"({keys.size} keys)")
        return [ClassMap(path, self.class_index(k, path), cams[n]) for n, k in enumerate(keys.tolist())]


class SeamReader(ForeignReader):
    def maps(self, image_id: str) -> list[ClassMap]:
        (path,) = self.files(image_id)
        return [ClassMap(path, self.class_index(k, path), _array(v, path, f"the map of key {k!r}"))
                for k, v in self._dictionary(path).items()]


class PngReader(ForeignReader):
    """``<id>_<class>.png`` (the class is what follows the last ``_``) or ``<id>/<class>.png``."""

    def __init__(self, folder: Path, classes: Sequence[str], numbering: str) -> None:
        super().__init__(folder, classes, numbering)
        self._by_id: dict[str, list[tuple[Path, str]]] = collections.defaultdict(list)
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():
                self._by_id[entry.name] += [(p, p.stem) for p in sorted(entry.glob("*.png"))]
            elif entry.suffix == ".png" and "_" in entry.stem:
                image_id, _, token = entry.stem.rpartition("_")
                self._by_id[image_id].append((entry, token))

    def files(self, image_id: str) -> list[Path]:
        return [path for path, _ in self._by_id.get(image_id, [])]

    def maps(self, image_id: str) -> list[ClassMap]:
        return [ClassMap(path, self._token_class(token, path), _read_png(path))
                for path, token in self._by_id[image_id]]

    def _token_class(self, token: str, path: Path) -> int:
        if token in self.classes:
            return self.classes.index(token)
        if token.isdigit():
            return self.class_index(int(token), path)
        raise InputError(f"{path}: {token!r} is neither a class of the data set ({self.classes}) nor a class number")


def _read_png(path: Path) -> np.ndarray:
    try:
        with open_image(path) as im:
            if im.mode != "L":
                raise InputError(f"{path}: CAM PNGs are 8-bit grayscale (mode L), this one is mode {im.mode}")
            return np.asarray(im, dtype=np.float32) / 255.0
    except OSError as exc:
        raise InputError(f"{path}: cannot read PNG ({exc})") from exc


class ArrayReader(ForeignReader):
    """H x W x C arrays whose channels are the classes of ``channel_classes`` (or ``classes.txt``)."""

    suffixes = (".npy", ".npz")

    def __init__(self, folder: Path, classes: Sequence[str], numbering: str,
                 channel_classes: Sequence[str] | None) -> None:
        super().__init__(folder, classes, numbering)
        where = "option classes"
        if not channel_classes:
            where = str(folder / CLASSES_FILE)
            if not (folder / CLASSES_FILE).is_file():
                raise MissingInputError(f"{folder}: format array needs the class of each channel: the option "
                                        f"classes, or a {CLASSES_FILE} there (one name a line)")
            channel_classes = (folder / CLASSES_FILE).read_text().split()
        unknown = [c for c in channel_classes if c not in self.classes]
        if unknown:
            raise InputError(f"{where}: {unknown} are not classes of the data set ({self.classes})")
        self.channels = [self.classes.index(c) for c in channel_classes]

    def maps(self, image_id: str) -> list[ClassMap]:
        (path,) = self.files(image_id)
        cams = _array(_load_plain(path), path, "the array")
        if cams.ndim != 3 or cams.shape[2] != len(self.channels):
            raise InputError(f"{path}: array of shape {cams.shape} is not H x W x {len(self.channels)} "
                             f"(one channel per listed class)")
        return [ClassMap(path, c, cams[:, :, n]) for n, c in enumerate(self.channels)]


def _load_plain(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a plain numpy array file ({exc})") from exc
    if isinstance(data, np.ndarray):
        return data
    with data:
        if len(data.files) != 1:
            raise InputError(f"{path}: an .npz of CAMs holds one array, this one {data.files}")
        try:
            return data[data.files[0]]
        except ValueError as exc:  # an object array in the archive
            raise InputError(f"{path}: not a plain numpy array ({exc})") from exc


def open_reader(fmt: str, folder: str | os.PathLike, classes: Sequence[str], numbering: str,
                channel_classes: Sequence[str] | None = None) -> ForeignReader:
    """The reader of ``fmt`` (one of FORMATS) over ``folder``; ``channel_classes`` is for ``array``."""
    folder = Path(folder)
    if fmt == "array":
        return ArrayReader(folder, classes, numbering, channel_classes)
    return {"irn": IrnReader, "seam": SeamReader, "png": PngReader}[fmt](folder, classes, numbering)


@dataclass(frozen=True)
class MapSettings:
    """How foreign maps become entries: rescaled to [0, 1] or checked to be there; resized to
    their image or checked to have its size."""

    normalize: bool
    resize: bool


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image file's header; its pixels are not decoded."""
    try:
        with open_image(path) as im:
            return im.height, im.width
    except OSError as exc:
        raise InputError(f"{path}: cannot read the image's size ({exc})") from exc


def _checked(m: ClassMap, size: tuple[int, int], settings: MapSettings, what: str) -> np.ndarray:
    values = m.values
    if values.ndim != 2:
        raise InputError(f"{m.path}: {what} has shape {values.shape}, not H x W")
    if not np.isfinite(values).all():
        raise InputError(f"{m.path}: {what} holds NaN or infinite values")
    if values.shape != size:
        if not settings.resize:
            raise InputError(f"{m.path}: {what} is {values.shape[0]}x{values.shape[1]} but the image is "
                             f"{size[0]}x{size[1]}; set resize: true to resize maps to their image")
        values = resize(np.ascontiguousarray(values, dtype=np.float32), size)
    if settings.normalize:
        values = np.maximum(values, 0)
        peak = values.max()
        values = values / peak if peak > 0 else values
    elif values.min() < -RANGE_TOLERANCE or values.max() > 1 + RANGE_TOLERANCE:
        raise InputError(f"{m.path}: {what} spans [{values.min():.3g}, {values.max():.3g}], not 0..1; set "
                         f"normalize: true to divide each map by its maximum")
    return np.clip(values, 0, 1)


def to_entry(image_id: str, maps: Sequence[ClassMap], labels: Iterable[int], size: tuple[int, int],
             settings: MapSettings, classes: Sequence[str], where: str) -> CamEntry:
    """The entry our CAM files hold: the maps of the image's labelled classes only, in class order
    (as infer_cam writes them); maps of other classes and of background are dropped."""
    by_class: dict[int, ClassMap] = {}
    for m in maps:
        if m.class_index in by_class:
            raise InputError(f"{m.path}: a second map of class {classes[m.class_index]!r} for image {image_id} "
                             f"(the first is in {by_class[m.class_index].path})")
        by_class[m.class_index] = m
    present = sorted(labels)
    lacking = [classes[c] for c in present if c not in by_class]
    if lacking:
        raise InputError(f"{where}: no map of class(es) {lacking}, which image {image_id} is labelled with")
    cams = [_checked(by_class[c], size, settings, f"the map of class {classes[c]!r} of image {image_id}")
            for c in present]
    return CamEntry(cams=np.stack(cams) if cams else np.zeros((0, *size), np.float32),
                    class_indices=np.asarray(present, dtype=np.int64))


def import_split(index: DatasetIndex, split: str, reader: ForeignReader, settings: MapSettings,
                 writer: CamWriter, on_image: Callable[[str], None] | None = None) -> int:
    """Write every image of ``split`` from ``reader`` into ``writer``, after checking that each has
    CAMs; returns how many maps were dropped (background, classes the image is not labelled with)."""
    ids = index.ids(split)
    unlabelled = [i for i in ids if i not in index.labels]
    if unlabelled:
        raise MissingEntryError(f"data set {index.name!r}: {len(unlabelled)} id(s) of split {split!r} have no "
                                f"image-level labels, e.g. {unlabelled[:5]}")
    missing = [i for i in ids if not reader.files(i)]
    if missing:
        shown = ", ".join(missing[:50]) + (f" and {len(missing) - 50} more" if len(missing) > 50 else "")
        raise MissingEntryError(f"{reader.folder}: no CAMs of {len(missing)} of the {len(ids)} images of split "
                                f"{split!r}: {shown}")
    dropped = 0
    for image_id in ids:
        maps = reader.maps(image_id)
        where = ", ".join(str(p) for p in reader.files(image_id))
        entry = to_entry(image_id, maps, index.labels[image_id], image_size(index.image_path(image_id)),
                         settings, index.classes, where)
        writer.write(image_id, entry.cams, entry.class_indices)
        dropped += len(maps) - len(entry.class_indices)
        if on_image is not None:
            on_image(image_id)
    return dropped


def channels_last(entry: CamEntry, num_classes: int, dtype: np.dtype | str = np.float16) -> np.ndarray:
    """An entry as H x W x (num_classes - 1), channel c - 1 for class c (0 where the image has no
    map): what format ``array`` reads back with the foreground class names as its list."""
    out = np.zeros((*entry.size, num_classes - 1), dtype=dtype)
    out[:, :, entry.class_indices - 1] = entry.cams.transpose(1, 2, 0)
    return out
