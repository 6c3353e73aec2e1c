"""COCO 2014 as a data set: downloaded or read in place, indexed with masks made from its instances.

A COCO folder holds ``train2014/``, ``val2014/`` and ``annotations/instances_{train,val}2014.json``
(the official archives unpack to exactly that). It is never written to; what the index needs is
made under the prepared root instead:

- ``JPEGImages/<id>.jpg``: relative symbolic links to the COCO images, so the index's one image
  folder serves both splits without copying 19 GB. The id is the image's ``file_name`` without
  its extension, checked as a plain name (``stages.io.ids``);
- ``SegmentationClass/<id>.png``: the semantic masks (``stages.data.coco_masks``: the overlap and
  crowd rules), palette PNGs like every other kind's. A mask newer than its instances JSON is
  reused, so a killed run resumes; delete the folder to render them again.

Classes: background, then the JSON's categories in category-id order (COCO's ids 1..90, with
gaps, become 1..80). Splits: train2014 is ``train_aug``; ``train``, on which CAMs are evaluated,
is its first ``max_train`` ids (all by default); val2014 is ``val``. Ids are taken in sorted order
and ``max_*`` keep the first N, for a first look at a fraction of the data. An image with no
annotated pixel is left out: it has no image-level label to learn from (check_dataset would stop
on it). Image-level labels are the classes present in the mask, so labels and masks always agree.

The instances JSONs and the images are files of the COCO folder: one that is a symbolic link
leading outside it is refused unless ``dataset.coco.follow_symlinks_outside``
(``stages.data.data_folder``), as for the other kinds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stages.data.coco_masks import instance_mask, semantic_mask
from stages.data.data_folder import DataFolder
from stages.data.download import fetch_and_extract
from stages.data.index import DatasetIndex
from stages.errors import InputError, MissingInputError
from stages.io.ids import check_id
from stages.io.label_png import label_path, read_label, write_label
from stages.runtime.progress import progress_bar

SPLITS = {"train_aug": "train2014", "val": "val2014"}  # index split -> COCO folder
# archive name -> the folder it unpacks to, which the COCO folder holds under the same name
ARCHIVE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "annotations_trainval2014": "annotations"}
IMAGE_DIR, MASK_DIR = "JPEGImages", "SegmentationClass"
SETTING = "dataset.coco"  # the config section, named when a link leads outside the COCO folder


def _field(entry: Any, key: str, kind: type, where: str) -> Any:
    """``entry[key]`` when it is a ``kind`` (true/false are no integers), else an error naming ``where``:
    an instances JSON from elsewhere must fail on its first malformed entry, not deep in numpy."""
    if not isinstance(entry, dict) or not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
        raise InputError(f"{where}: needs {key!r} as a JSON {'string' if kind is str else kind.__name__}")
    return entry[key]


def load_instances(coco: DataFolder, path: Path) -> dict:
    """An instances JSON of the COCO folder ``coco``, with its three lists present."""
    if not path.is_file():
        raise MissingInputError(f"{path}: instances JSON missing (a COCO folder holds annotations/"
                                f"instances_{{train,val}}2014.json)")
    try:
        data = json.loads(coco.read_text(path, "instances JSON"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: cannot read the instances JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        _field(data, key, list, str(path))
    return data


def categories(data: dict, path: Path) -> list[tuple[int, str]]:
    """(category id, name) in id order: class ``i + 1`` is the ``i``-th (0 is background)."""
    found = sorted((_field(c, "id", int, f"{path}: category"), _field(c, "name", str, f"{path}: category"))
                   for c in data["categories"])
    ids = [i for i, _ in found]
    if len(set(ids)) != len(ids) or not 0 < len(ids) < 255:
        raise InputError(f"{path}: needs 1..254 categories with distinct ids, has {len(ids)} ids "
                         f"({len(ids) - len(set(ids))} repeated)")
    return found


def _annotations_by_image(data: dict, path: Path) -> dict[int, list[dict]]:
    """Every annotation under its image id, each checked to name a known image and category."""
    images = {_field(image, "id", int, f"{path}: image") for image in data["images"]}
    if len(images) != len(data["images"]):
        raise InputError(f"{path}: {len(data['images']) - len(images)} image id(s) listed twice")
    known = {c["id"] for c in data["categories"]}
    out: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        where = f"{path}: annotation {ann.get('id') if isinstance(ann, dict) else ann!r}"
        image_id = _field(ann, "image_id", int, where)
        category = _field(ann, "category_id", int, where)
        if category not in known:
            raise InputError(f"{where}: category_id {category} is not one of the file's categories "
                             f"{sorted(known)}")
        if image_id not in images:
            raise InputError(f"{where}: image_id {image_id} is not one of the file's images")
        if "segmentation" not in ann:
            raise InputError(f"{where}: no 'segmentation'")
        out.setdefault(image_id, []).append(ann)
    return out


def _image_label(image: dict, annotations: list[dict], class_of: dict[int, int], path: Path) -> np.ndarray:
    """The image's semantic mask; an annotation without ``area`` is ranked by its pixel count."""
    height = _field(image, "height", int, f"{path}: image {image['id']}")
    width = _field(image, "width", int, f"{path}: image {image['id']}")
    if height < 1 or width < 1:
        raise InputError(f"{path}: image {image['id']} has size {width}x{height}")
    instances = []
    for ann in annotations:
        pixels = instance_mask(ann["segmentation"], height, width, f"{path}: annotation {ann.get('id')}")
        area = ann.get("area")
        instances.append((class_of[ann["category_id"]], area if isinstance(area, (int, float)) else pixels.sum(),
                          pixels))
    return semantic_mask(instances, height, width)


def _link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target`` (replacing one that points elsewhere)."""
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return
    temporary = link.with_name(f".{link.name}.link")
    temporary.unlink(missing_ok=True)
    os.symlink(relative, temporary)
    os.replace(temporary, link)


def _images_by_id(data: dict, path: Path) -> dict[str, dict]:
    """The JSON's images under their ids: file names without extension, each a plain name."""
    out = {}
    for image in data["images"]:
        where = f"{path}: image {image['id']}"
        image_id = check_id(Path(check_id(_field(image, "file_name", str, where), where)).stem, where)
        if image_id in out:
            raise InputError(f"{path}: two images are named {image_id!r}")
        out[image_id] = image
    return out


def index_split(coco: DataFolder, images_dir: Path, instances: Path, out_root: Path, limit: int | None,
                progress: bool = False) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """(class names, ids, labels) of one COCO split of the folder ``coco``: masks written, images
    linked under ``out_root``."""
    data = load_instances(coco, instances)
    found = categories(data, instances)
    class_of = {category: i for i, (category, _) in enumerate(found, 1)}
    by_image = _annotations_by_image(data, instances)
    images = _images_by_id(data, instances)
    (out_root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    json_time = instances.stat().st_mtime
    ids, labels = [], {}
    candidates = [i for i in sorted(images) if images[i]["id"] in by_image]
    coco.refuse_outside(images_dir / images[i]["file_name"] for i in candidates)
    for image_id in progress_bar(candidates, desc=images_dir.name, disable=not progress):
        if limit is not None and len(ids) == limit:
            break
        image = images[image_id]
        source = images_dir / image["file_name"]
        if not source.is_file():
            raise MissingInputError(f"{instances}: image {image['id']} is {source}, which is missing")
        mask_file = label_path(out_root / MASK_DIR, image_id)
        if mask_file.exists() and mask_file.stat().st_mtime >= json_time:
            label = read_label(mask_file)
        else:
            label = _image_label(image, by_image[image["id"]], class_of, instances)
            write_label(mask_file, label)
        present = [int(c) for c in np.flatnonzero(np.bincount(label.ravel(), minlength=256)) if 0 < c <= len(found)]
        if present:
            _link(out_root / IMAGE_DIR / f"{image_id}.jpg", source)
            ids.append(image_id)
            labels[image_id] = present
    return ["background", *(name for _, name in found)], ids, labels


def download_coco(root: Path, download_dir: str | os.PathLike, archives: Mapping[str, Mapping[str, str | None]],
                  retries: int, progress: bool = True) -> Path:
    """Fetch and unpack the three COCO 2014 archives; return ``root/coco2014``, a COCO folder.

    Once that folder is complete the archives are not looked at again (not even checksummed), so
    they can be deleted to free 19 GB.
    """
    if set(archives) != set(ARCHIVE_FOLDERS):
        raise InputError(f"the COCO archives must be exactly {sorted(ARCHIVE_FOLDERS)}, got {sorted(archives)}")
    folder = root / "coco2014"
    if all((folder / inner).is_dir() for inner in ARCHIVE_FOLDERS.values()):
        return folder
    extracted = fetch_and_extract(archives, download_dir, root / "archives", retries, progress)
    for name, inner in ARCHIVE_FOLDERS.items():
        if (folder / inner).exists():
            continue
        if not (extracted[name] / inner).is_dir():
            raise InputError(f"{extracted[name]}: the {name} archive holds no {inner}/ folder")
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(extracted[name] / inner, folder / inner)
    return folder


def prepare_coco(root: str | os.PathLike, folder: str | os.PathLike | None, download_dir: str | os.PathLike,
                 archives: Mapping[str, Mapping[str, str | None]], retries: int,
                 max_train_aug: int | None = None, max_train: int | None = None, max_val: int | None = None,
                 progress: bool = True, follow_symlinks_outside: bool = False) -> DatasetIndex:
    """The COCO 2014 index under ``root``, from ``folder`` in place or, without one, downloaded;
    files of the folder leading outside it refused unless ``follow_symlinks_outside``."""
    caps = {"max_train_aug": max_train_aug, "max_train": max_train, "max_val": max_val}
    if any(n is not None and n < 1 for n in caps.values()):
        raise InputError(f"image caps must be at least 1 (or none), got {caps}")
    root = Path(root).resolve()
    if folder is None:
        folder = download_coco(root, download_dir, archives, retries, progress)
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: the COCO folder is not a directory")
    coco = DataFolder(folder, SETTING, follow_symlinks_outside)
    limits = {"train_aug": max_train_aug, "val": max_val}
    (classes, train_ids, train_labels), (val_classes, val_ids, val_labels) = (
        index_split(coco, folder / name, folder / "annotations" / f"instances_{name}.json", root, limits[split],
                    progress)
        for split, name in SPLITS.items())
    if classes != val_classes:
        raise InputError(f"{folder / 'annotations'}: the train2014 and val2014 instances JSONs list different "
                         f"categories")
    shared = set(train_ids) & set(val_ids)
    if shared:
        raise InputError(f"{folder}: {len(shared)} image name(s) in both splits, e.g. {sorted(shared)[0]!r}")
    splits = {"train_aug": train_ids, "train": train_ids[:max_train], "val": val_ids}
    return DatasetIndex(name="coco", root=root, classes=classes, splits=splits, labels=train_labels | val_labels,
                        image_dir=IMAGE_DIR, image_ext=".jpg")
