"""The prepared index: one JSON file that every later stage reads instead of walking folders.

It records the class names, the ids of every split, the image-level labels and where the images,
masks and scribbles of a VOC-format folder live, so a stage never guesses a path. Every id and
folder name in it is checked on construction (``stages.io.ids``): an index is joined to paths
by every stage, so a hand-edited one must not lead a stage outside its data folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from stages.errors import InputError, MissingEntryError, MissingInputError
from stages.io.atomic import write_text
from stages.io.ids import check_id
from stages.io.text import read_utf8

FORMAT_VERSION = 1

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass
class DatasetIndex:
    """What a prepared data set holds. Class 0 is background; labels list foreground indices."""

    name: str
    root: Path
    classes: list[str]
    splits: dict[str, list[str]]
    labels: dict[str, list[int]]
    image_dir: str = "JPEGImages"
    image_ext: str = ".jpg"
    mask_dirs: dict[str, str] = field(default_factory=dict)  # split -> folder under root
    scribble_dir: str | None = None

    def __post_init__(self) -> None:
        """Refuse ids and folder names that are not plain names (they become paths)."""
        where = f"data set {self.name!r}"
        for split, ids in self.splits.items():
            for n, image_id in enumerate(ids, 1):
                check_id(image_id, f"{where}, split {split!r}, item {n}")
        for image_id in self.labels:
            check_id(image_id, f"{where}, labels")
        for key, folder in [("image_dir", self.image_dir), ("scribble_dir", self.scribble_dir),
                            *((f"mask_dirs[{k!r}]", v) for k, v in self.mask_dirs.items())]:
            if folder is not None:
                check_id(folder, f"{where}, {key}")
        check_id(f"x{self.image_ext}", f"{where}, image_ext {self.image_ext!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def ids(self, split: str) -> list[str]:
        try:
            return self.splits[split]
        except KeyError:
            raise MissingEntryError(f"split {split!r} not in the index of {self.name!r} "
                           f"(has {sorted(self.splits)})") from None

    def image_classes(self, split: str) -> list[list[int]]:
        """The image-level (foreground) classes of each image of ``split``, in split order."""
        return [self.labels.get(image_id, []) for image_id in self.ids(split)]

    def image_path(self, image_id: str) -> Path:
        return self.root / self.image_dir / f"{image_id}{self.image_ext}"

    def mask_path(self, image_id: str, split: str) -> Path:
        folder = self.mask_dirs.get(split, "SegmentationClass")
        return self.root / folder / f"{image_id}.png"

    def scribble_path(self, image_id: str) -> Path:
        if self.scribble_dir is None:
            raise MissingInputError(f"data set {self.name!r} has no scribbles")
        return self.root / self.scribble_dir / f"{image_id}.png"

    def save(self, path: str | os.PathLike) -> None:
        data = {
            "format_version": FORMAT_VERSION, "name": self.name, "root": str(self.root),
            "classes": self.classes, "image_dir": self.image_dir, "image_ext": self.image_ext,
            "mask_dirs": self.mask_dirs, "scribble_dir": self.scribble_dir,
            "splits": self.splits, "labels": self.labels,
        }
        write_text(path, json.dumps(data, indent=1))

    def fingerprint(self, split: str) -> str:
        """A short hash of what training on ``split`` reads from the index: the class list, the
        split's ids and their image-level labels."""
        ids = self.ids(split)
        text = json.dumps([self.classes, ids, [self.labels.get(i) for i in ids]])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetIndex":
        try:
            data = json.loads(read_utf8(path, "data set index"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: cannot read the data set index ({exc})") from exc
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{path}: index format {data.get('format_version')} != {FORMAT_VERSION}")
        try:
            return cls(
                name=data["name"], root=Path(data["root"]), classes=list(data["classes"]),
                splits={k: list(v) for k, v in data["splits"].items()},
                labels={k: [int(c) for c in v] for k, v in data["labels"].items()},
                image_dir=data["image_dir"], image_ext=data["image_ext"],
                mask_dirs=dict(data["mask_dirs"]), scribble_dir=data["scribble_dir"],
            )
        except ValueError as exc:  # a bad id: name the file the user has to fix
            raise InputError(f"{path}: {exc}") from exc
