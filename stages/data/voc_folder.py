"""VOC-layout folders: reading one in place, and assembling PASCAL VOC 2012 from its archives.

Any folder with ``JPEGImages/``, ``SegmentationClass/`` and ``ImageSets/Segmentation/*.txt``
becomes an index without being copied. Conventions, shared by the real VOC and any other
folder:

- classes: ``classes.txt`` (one name a line, background first) when present, else the 21 VOC
  classes;
- ``train_aug``: its list file when present; else, when ``SegmentationClassAug/`` exists, every
  id with an Aug mask minus ``val`` (the SBD-augmented set), with its masks read from there;
  else the ``train`` list;
- image-level labels from ``image_labels.json`` (id -> class names), from the XML
  ``Annotations`` (every ``object/name``, difficult ones included, as the common
  ``cls_labels.npy`` does), or from the masks (classes present other than 0 and 255);
  ``auto`` takes the first of these that exists. Ids with no label source are left out of
  ``labels``; check_dataset reports them;
- scribbles: ``Scribbles/<id>.png`` when that folder exists. A folder read in place is never
  written to, so ScribbleSup XML is rendered only for a VOC tree this module extracted itself;
- ids are plain file names (``stages.io.ids``): a list line such as ``../../outside/x`` is
  refused, naming the list file and line, since the id is joined to the folder's paths;
- every file read from the folder (lists, ``classes.txt``, ``image_labels.json``, XML, images,
  masks, scribbles) that is a symbolic link leading outside it is refused unless
  ``follow_symlinks_outside`` (``dataset.folder`` or ``dataset.voc``): ``stages.data.data_folder``.
  Text files must be UTF-8 (``stages.io.text``).
"""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from stages.data.data_folder import DataFolder
from stages.data.download import archive_filename, fetch, safe_extract
from stages.data.index import VOC_CLASSES, DatasetIndex
from stages.data.scribbles import render_scribblesup_xml
from stages.errors import InputError
from stages.io.ids import check_id
from stages.io.image_files import open_image
from stages.io.label_png import label_path, read_label, write_label
from stages.runtime.progress import progress_bar

LABEL_SOURCES = ("auto", "json", "xml", "masks")
AUG_DIR = "SegmentationClassAug"
SCRIBBLE_DIR = "Scribbles"
VOC_ARCHIVES = ("voc2012_trainval", "segmentation_class_aug", "scribbles")
VOC_SETTING = "dataset.voc"  # the config section of --kind voc, named when a link leads out


def _first_words(text: str) -> list[tuple[int, str]]:
    """(line number, first word) of every line that is not blank.

    Lines end at line feeds only and words at spaces and tabs only: any other control character
    (a lone carriage return, a vertical tab) stays inside the word, where the id check sees it,
    instead of silently splitting one line into two ids.
    """
    words = [(n, re.split(r"[ \t]+", line.strip(" \t\r"))[0]) for n, line in enumerate(text.split("\n"), 1)]
    return [(n, word) for n, word in words if word]


def read_id_list(folder: DataFolder, path: Path) -> list[str]:
    """Ids of one ImageSets list: first word of every non-blank line, each a plain file name."""
    words = _first_words(folder.read_text(path, "split list"))
    return [check_id(word, f"{path}, line {n}") for n, word in words]


def read_classes(folder: DataFolder) -> list[str]:
    path = folder.root / "classes.txt"
    if not path.exists():
        return list(VOC_CLASSES)
    names = [word for _, word in _first_words(folder.read_text(path, "class list"))]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InputError(f"{path}: need background plus at least one class, all names distinct")
    return names


def _foreground_indices(names: list[str], classes: list[str], source: Path, image_id: str) -> list[int]:
    index = {name: i for i, name in enumerate(classes)}
    out = set()
    for name in names:
        if name not in index or index[name] == 0:
            raise InputError(f"{source}: image {image_id!r} has label {name!r}, "
                             f"not a foreground class of {classes[1:]}")
        out.add(index[name])
    return sorted(out)


def labels_from_json(folder: DataFolder, path: Path, classes: list[str], ids: list[str]) -> dict[str, list[int]]:
    """``image_labels.json``: id -> list of foreground class names."""
    try:
        data = json.loads(folder.read_text(path, "image label file"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: cannot read image labels ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object mapping image id -> list of class names, "
                         f"got a JSON {type(data).__name__}")
    wrong = [i for i in ids if i in data and not (isinstance(data[i], list)
                                                   and all(isinstance(c, str) for c in data[i]))]
    if wrong:
        raise InputError(f"{path}: the labels of {wrong[0]!r} are {json.dumps(data[wrong[0]])}, not a list of "
                         f"class names (e.g. [\"dog\", \"person\"]); {len(wrong)} id(s) like this")
    return {i: _foreground_indices(data[i], classes, path, i) for i in ids if i in data}


def labels_from_xml(folder: DataFolder, annotations: Path, classes: list[str], ids: list[str],
                    progress: bool = False) -> dict[str, list[int]]:
    """VOC XML: the names of the top-level ``object`` elements (parts are not objects)."""
    folder.refuse_outside(annotations / f"{i}.xml" for i in ids)
    out = {}
    for i in progress_bar(ids, desc="labels from XML", disable=not progress):
        path = annotations / f"{i}.xml"
        if not path.exists():
            continue
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise InputError(f"{path}: cannot parse annotation XML ({exc})") from exc
        names = [(obj.findtext("name") or "").strip() for obj in root.findall("object")]
        out[i] = _foreground_indices(names, classes, path, i)
    return out


def labels_from_masks(index: DatasetIndex, progress: bool = False) -> dict[str, list[int]]:
    """Classes present in each id's mask (its first split's mask folder). An id whose mask is
    missing or unreadable gets no label: check_dataset reports both, so ``skip`` can drop it."""
    out = {}
    seen: set[str] = set()
    jobs = [(i, split) for split, ids in index.splits.items() for i in ids]
    for i, split in progress_bar(jobs, desc="labels from masks", disable=not progress):
        if i in seen:
            continue
        seen.add(i)
        path = index.mask_path(i, split)
        if not path.exists():
            continue
        try:
            label = read_label(path)
        except (OSError, SyntaxError, ValueError):
            continue
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        out[i] = [int(c) for c in present if 0 < c < index.num_classes]
    return out


def _read_splits(folder: DataFolder) -> tuple[dict[str, list[str]], dict[str, str]]:
    root = folder.root
    lists = root / "ImageSets" / "Segmentation"
    splits = {p.stem: read_id_list(folder, p) for p in sorted(lists.glob("*.txt"))}
    for needed in ("train", "val"):
        if needed not in splits:
            raise InputError(f"{lists}: no {needed}.txt (found {sorted(splits) or 'no lists'})")
    mask_dirs: dict[str, str] = {}
    aug = root / AUG_DIR
    if aug.is_dir():
        mask_dirs["train_aug"] = AUG_DIR
        if "train_aug" not in splits:
            val = set(splits["val"])
            stems = (check_id(p.stem, f"{aug}: file {p.name!r}") for p in aug.glob("*.png")
                     if not p.name.startswith("."))  # AppleDouble and other hidden files are no masks
            splits["train_aug"] = sorted(s for s in stems if s not in val)
    splits.setdefault("train_aug", list(splits["train"]))
    ordered = {k: splits[k] for k in ("train_aug", "train", "val")}
    return ordered | splits, mask_dirs


def index_files(index: DatasetIndex) -> Iterator[Path]:
    """Every image, mask and scribble path ``index`` names."""
    for split, ids in index.splits.items():
        for image_id in ids:
            yield index.image_path(image_id)
            yield index.mask_path(image_id, split)
            if index.scribble_dir is not None:
                yield index.scribble_path(image_id)


def read_voc_folder(path: str | os.PathLike, labels: str, name: str | None = None,
                    progress: bool = False, follow_symlinks_outside: bool = False,
                    setting: str = "dataset.folder") -> DatasetIndex:
    """Index a VOC-layout folder in place (symbolic links leading out refused unless allowed by
    ``follow_symlinks_outside``, the option of the config section ``setting``)."""
    if labels not in LABEL_SOURCES:
        raise InputError(f"labels must be one of {LABEL_SOURCES}, got {labels!r}")
    root = Path(path).resolve()
    if not (root / "JPEGImages").is_dir():
        raise InputError(f"{root}: not a VOC-layout folder (no JPEGImages/)")
    folder = DataFolder(root, setting, follow_symlinks_outside)
    classes = read_classes(folder)
    splits, mask_dirs = _read_splits(folder)
    scribbles = root / SCRIBBLE_DIR
    index = DatasetIndex(name=name or root.name, root=root, classes=classes, splits=splits, labels={},
                         mask_dirs=mask_dirs,
                         scribble_dir=SCRIBBLE_DIR if scribbles.is_dir() else None)
    folder.refuse_outside(index_files(index))
    ids = sorted({i for split_ids in splits.values() for i in split_ids})
    json_path, annotations = root / "image_labels.json", root / "Annotations"
    if labels == "auto":
        labels = "json" if json_path.exists() else "xml" if annotations.is_dir() else "masks"
    if labels == "json":
        index.labels = labels_from_json(folder, json_path, classes, ids)
    elif labels == "xml":
        if not annotations.is_dir():
            raise InputError(f"{root}: labels from XML asked for, but there is no Annotations/ folder")
        index.labels = labels_from_xml(folder, annotations, classes, ids, progress)
    else:
        index.labels = labels_from_masks(index, progress)
    return index


def _scribble_xml_dir(extracted: Path) -> Path:
    """The folder of ScribbleSup's VOC XML files (``pascal_2012`` in the official zip)."""
    folders = sorted({p.parent for p in extracted.rglob("*.xml")})
    preferred = [f for f in folders if f.name == "pascal_2012"]
    if preferred:
        return preferred[0]
    if len(folders) == 1:
        return folders[0]
    raise InputError(f"{extracted}: cannot tell which folder holds the VOC scribbles "
                     f"(XML in {[str(f) for f in folders] or 'no folder'})")


def render_scribble_folder(xml_source: DataFolder, xml_dir: Path, voc: DataFolder, classes: list[str],
                           progress: bool = False) -> Path:
    """Render every scribble XML (in ``xml_dir``, a folder of ``xml_source``) whose image exists into
    ``voc.root/Scribbles`` (all or nothing)."""
    voc_root = voc.root
    final = voc_root / SCRIBBLE_DIR
    if final.exists():
        return final
    partial = voc_root / f".{SCRIBBLE_DIR}.partial"
    class_index = {name: i for i, name in enumerate(classes)}
    xmls = sorted(xml_dir.glob("*.xml"))
    xml_source.refuse_outside(xmls)
    voc.refuse_outside(voc_root / "JPEGImages" / f"{xml.stem}.jpg" for xml in xmls)
    for xml in progress_bar(xmls, desc="scribbles", disable=not progress):
        image = voc_root / "JPEGImages" / f"{xml.stem}.jpg"
        if not image.exists():
            continue
        with open_image(image) as im:
            shape = (im.height, im.width)
        write_label(label_path(partial, xml.stem), render_scribblesup_xml(xml, shape, class_index))
    partial.mkdir(exist_ok=True)
    os.replace(partial, final)
    return final


def _find_devkit(extracted: Path) -> Path:
    for candidate in sorted(extracted.rglob("VOC2012")):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise InputError(f"{extracted}: the VOC archive holds no VOC2012/JPEGImages folder")


def _find_aug_dir(extracted: Path) -> Path:
    folders = [p for p in extracted.rglob(AUG_DIR) if p.is_dir() and "__MACOSX" not in p.parts]
    if not folders:
        raise InputError(f"{extracted}: the SegmentationClassAug archive holds no {AUG_DIR} folder")
    return folders[0]


def prepare_voc(root: str | os.PathLike, download_dir: str | os.PathLike,
                archives: Mapping[str, Mapping[str, str | None]], retries: int,
                devkit: str | os.PathLike | None = None, progress: bool = True,
                follow_symlinks_outside: bool = False) -> DatasetIndex:
    """PASCAL VOC 2012 with SBD masks and ScribbleSup scribbles, downloaded or found in place.

    With ``devkit`` (an existing VOCdevkit/VOC2012) nothing is downloaded or written: Aug masks
    and scribble PNGs are used when the devkit already holds them. Otherwise every configured
    archive is fetched into ``download_dir`` and unpacked under ``root``; the Aug masks are moved
    into the VOC2012 folder and the scribbles rendered there, so the index root is that folder.
    """
    unknown = sorted(set(archives) - set(VOC_ARCHIVES))
    if unknown:
        raise InputError(f"unknown VOC archive name(s) {unknown}; known: {list(VOC_ARCHIVES)}")
    if devkit is not None:
        voc_root = Path(devkit).resolve()
        if not (voc_root / "JPEGImages").is_dir():
            raise InputError(f"{voc_root}: devkit is not a VOC2012 folder (no JPEGImages/)")
        return read_voc_folder(voc_root, "auto", name="voc", progress=progress,
                               follow_symlinks_outside=follow_symlinks_outside, setting=VOC_SETTING)
    if "voc2012_trainval" not in archives:
        raise InputError("the VOC archives must include 'voc2012_trainval'")
    root = Path(root).resolve()
    extracted = {}
    for name, spec in archives.items():
        url = str(spec["url"])
        archive = fetch(url, Path(download_dir) / archive_filename(url), spec.get("md5"), retries,
                        progress=progress)
        extracted[name] = safe_extract(archive, root / name)
    voc_root = _find_devkit(extracted["voc2012_trainval"])
    if "segmentation_class_aug" in extracted and not (voc_root / AUG_DIR).exists():
        os.replace(_find_aug_dir(extracted["segmentation_class_aug"]), voc_root / AUG_DIR)
    voc = DataFolder(voc_root, VOC_SETTING, follow_symlinks_outside)
    classes = read_classes(voc)
    if "scribbles" in extracted:
        render_scribble_folder(DataFolder(extracted["scribbles"], VOC_SETTING, follow_symlinks_outside),
                               _scribble_xml_dir(extracted["scribbles"]), voc, classes, progress)
    return read_voc_folder(voc_root, "auto", name="voc", progress=progress,
                           follow_symlinks_outside=follow_symlinks_outside, setting=VOC_SETTING)
