"""Verifying a prepared data set before any training touches it.

Every problem is collected (not raised at the first one) so a user fixes a broken download in
one pass: each listed image must decode (grayscale and CMYK JPEGs are fine), each mask must
exist, match its image's size and hold only 0..C-1 or 255, each listed image needs at least one
foreground class in its image-level label, and a split must be non-empty and list an id once.
Scribble files that exist are checked like masks; a missing scribble is not a problem, since
only scribble-supervised variants read them. An image or mask declaring a size beyond PIL's
decompression-bomb limit is a problem of its own (``stages.io.image_files``), found from its
header; a missing file whose name is there in another Unicode normalization (NFD on disk, NFC in
the list) is reported with that name.

Rows have a severity: ``error`` rows stop the check (policy stop) or drop the image (skip);
``warning`` rows only inform. The one warning so far is an EXIF orientation tag: pixels are used
as stored (``stages.data.images``), which is right for VOC-style masks drawn on the stored
pixels, but a viewer shows such an image turned, and a mask drawn on that view does not fit.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.data.images import ORIENTATIONS, TRANSPOSING, exif_orientation, load_rgb
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.atomic import atomic_path
from stages.io.label_png import IGNORE, read_label
from stages.runtime.progress import progress_bar

REPORT_COLUMNS = ("id", "split", "file", "problem", "severity")
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    id: str     # "" for a problem of a whole split
    split: str  # the splits concerned, space-separated
    file: str
    problem: str
    severity: str = ERROR  # ERROR: the image cannot be used; WARNING: it is used, but look at it


def orientation_note(orientation: int) -> str:
    """The rule, said where a user meets it: in the check report."""
    return (f"EXIF orientation {orientation} ({ORIENTATIONS[orientation]}) ignored: pixels are used as "
            f"stored, like VOC; rotate the file itself (e.g. exiftran -ai) if its mask was drawn on "
            f"the rotated view")


class _MissingFiles:
    """Says why a file looks present but is missing: a name beside it that differs only in its
    Unicode normalization (``bäume`` with one code point for ``ä`` in the list, two on disk, as
    macOS writes names). Each folder is listed once, on its first missing file."""

    def __init__(self) -> None:
        self.by_nfc: dict[Path, dict[str, str]] = {}

    def problem(self, path: Path, what: str) -> str:
        folder = path.parent
        if folder not in self.by_nfc:
            names = os.listdir(folder) if folder.is_dir() else []
            self.by_nfc[folder] = {unicodedata.normalize("NFC", name): name for name in names}
        twin = self.by_nfc[folder].get(unicodedata.normalize("NFC", path.name))
        if twin is None or twin == path.name:
            return f"{what} missing"
        return (f"{what} missing, but {twin!r} is there: the same name with its accents encoded otherwise "
                f"(Unicode NFC vs NFD); write the id and the file name alike")


def _label_map_problem(path: Path, image_hw: tuple[int, int] | None, num_classes: int,
                       what: str, missing: _MissingFiles, orientation: int = 1) -> str | None:
    """What is wrong with a mask or scribble file, or None.

    A size that is the image's transposed, on an image whose EXIF tag makes viewers show it
    transposed, is almost surely a mask drawn on the rotated view: the message says so.
    """
    if not path.exists():
        return missing.problem(path, what)
    try:
        label = read_label(path)
    except InputError as exc:  # a decompression bomb, a wrong mode: the file has its own column
        return str(exc).removeprefix(f"{path}: ")
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot read {what} ({exc})"
    if image_hw is not None and label.shape != image_hw:
        message = (f"{what} size {label.shape[1]}x{label.shape[0]} differs from the image's "
                   f"{image_hw[1]}x{image_hw[0]} (WxH)")
        if orientation in TRANSPOSING and label.shape == image_hw[::-1]:
            message += (f", but matches the image as viewers show it: probably drawn on the rotated "
                        f"view; {orientation_note(orientation)}")
        return message
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [int(v) for v in np.flatnonzero(counts) if num_classes <= v < IGNORE]
    if bad:
        return f"{what} has values {bad[:8]} outside 0..{num_classes - 1} and {IGNORE}"
    return None


def check_index(index: DatasetIndex, progress: bool = False) -> list[Problem]:
    """Every problem of the data set, in split order."""
    problems: list[Problem] = []
    splits_of: dict[str, list[str]] = defaultdict(list)
    for split, ids in index.splits.items():
        if not ids:
            problems.append(Problem("", split, "", "split is empty"))
        for image_id, count in Counter(ids).items():
            if count > 1:
                problems.append(Problem(image_id, split, "", f"listed {count} times in split {split!r}"))
        for image_id in dict.fromkeys(ids):
            splits_of[image_id].append(split)

    checked_masks: set[str] = set()
    missing = _MissingFiles()
    for image_id, splits in progress_bar(splits_of.items(), desc="checking images", disable=not progress):
        where = " ".join(splits)
        image_path = index.image_path(image_id)
        image_hw, orientation = None, 1
        if not image_path.exists():
            problems.append(Problem(image_id, where, str(image_path), missing.problem(image_path, "image")))
        else:
            try:
                image_hw = load_rgb(image_path).shape[:2]
            except ValueError as exc:
                # the file has its own column; the message alone is the problem
                problems.append(Problem(image_id, where, str(image_path), str(exc).removeprefix(f"{image_path}: ")))
            else:
                orientation = exif_orientation(image_path)
                if orientation != 1:
                    problems.append(Problem(image_id, where, str(image_path), orientation_note(orientation),
                                            WARNING))
        for split in splits:
            mask_path = index.mask_path(image_id, split)
            if str(mask_path) in checked_masks:
                continue
            checked_masks.add(str(mask_path))
            users = " ".join(s for s in splits if index.mask_path(image_id, s) == mask_path)
            issue = _label_map_problem(mask_path, image_hw, index.num_classes, "mask", missing, orientation)
            if issue:
                problems.append(Problem(image_id, users, str(mask_path), issue))
        if index.scribble_dir is not None and index.scribble_path(image_id).exists():
            issue = _label_map_problem(index.scribble_path(image_id), image_hw, index.num_classes, "scribble",
                                       missing, orientation)
            if issue:
                problems.append(Problem(image_id, where, str(index.scribble_path(image_id)), issue))
        label = index.labels.get(image_id)
        if label is None:
            problems.append(Problem(image_id, where, "", "no image-level label"))
        elif not label:
            problems.append(Problem(image_id, where, "", "image-level label has no foreground class"))
        elif any(not 0 < c < index.num_classes for c in label):
            problems.append(Problem(image_id, where, "",
                                    f"image-level label {label} outside 1..{index.num_classes - 1}"))
    return problems


def drop_images(index: DatasetIndex, ids: set[str]) -> DatasetIndex:
    """The index without ``ids`` in any split or label; duplicate listings collapse to one."""
    splits = {split: [i for i in dict.fromkeys(split_ids) if i not in ids]
              for split, split_ids in index.splits.items()}
    labels = {i: c for i, c in index.labels.items() if i not in ids}
    return dataclasses.replace(index, splits=splits, labels=labels)


def write_report(path: str | os.PathLike, problems: list[Problem]) -> None:
    """CSV with one row per problem; just the header when there is none."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(REPORT_COLUMNS)
            for p in problems:
                writer.writerow([p.id, p.split, p.file, p.problem, p.severity])


def summarize(problems: list[Problem], limit: int = 5) -> str:
    """The first few problems on one line each, for an error message."""
    lines = [f"  {p.id or '(split)'} [{p.split}] {p.file + ': ' if p.file else ''}{p.problem}"
             for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
