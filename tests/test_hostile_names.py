"""Hostile names and links: an id or a symbolic link must never lead a stage outside its folder.

The same id rule (``stages.io.ids``) is tried at every place an id becomes a path: an
``ImageSets`` list file, a hand-edited index JSON (under both check policies) and the label PNG
writer; invisible characters (zero-width, direction marks, odd spaces) are refused like path
separators. Symbolic links from a data folder to files outside it, for every file the folder is
read through (lists, classes.txt, image_labels.json, images, masks, scribbles), are refused at
indexing unless ``--follow-symlinks-outside`` (``dataset.folder.follow_symlinks_outside``) allows them.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import _list_file, make_toy_folder

from stages import check_dataset, prepare_dataset
from stages.data.checks import check_index
from stages.data.index import DatasetIndex
from stages.data.voc_folder import read_voc_folder
from stages.io.label_png import label_path, write_label

HOSTILE = {
    "parent_path": "../../outside/x",
    "absolute": "/etc/passwd",
    "slash": "a/b",
    "backslash": "a\\b",
    "dotdot": "..",
    "hidden": ".hidden",
    "nul": "x\x00y",
    "newline": "x\ny",
    "carriage_return": "x\ry",
    "empty": "",
    "zero_width_space": "x\u200by",
    "right_to_left_override": "x\u202ey",
    "byte_order_mark": "x\ufeffy",
    "no_break_space": "x\u00a0y",
    "line_separator": "x\u2028y",
}
# A list file is split at line feeds, and blank lines are skipped, so these two never reach
# the id check from a list file (see test_list_file_lines_are_split_at_line_feeds_only).
IN_LIST_FILE = {k: v for k, v in HOSTILE.items() if k not in ("newline", "empty")}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_toy_folder(tmp_path_factory.mktemp("pristine"), num_classes=2, num_train_aug=4, num_train=3)


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny VOC-format folder, free to edit, beside an ``outside`` folder."""
    root = tmp_path / "data" / pristine.name
    shutil.copytree(pristine, root)
    (tmp_path / "outside").mkdir()
    return root.resolve()


def _prepare(root: Path, index: Path, *flags: str) -> None:
    prepare_dataset.main(["--kind", "folder", "--path", str(root), "--labels", "auto", "--index", str(index),
                          "--no-progress", *flags])


# ---- ids in a split list file ----------------------------------------------------------------

@pytest.mark.parametrize("name", IN_LIST_FILE.values(), ids=IN_LIST_FILE.keys())
def test_list_file_id_is_refused_naming_file_line_and_id(folder: Path, tmp_path: Path, name: str) -> None:
    list_file = _list_file(folder, "train")
    lines = list_file.read_text().splitlines()
    list_file.write_text("\n".join([*lines, "", name, *lines[:1]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        _prepare(folder, tmp_path / "index.json")
    message = str(info.value)
    assert str(list_file) in message and f"line {len(lines) + 2}" in message and repr(name) in message
    assert not (tmp_path / "index.json").exists()


def test_list_file_lines_are_split_at_line_feeds_only(folder: Path) -> None:
    """Blank and whitespace-only lines are skipped (CRLF endings too); a line feed inside an id
    makes two lines, so ``x\\ny`` is read as the ids ``x`` and ``y``, which check_dataset then
    reports as missing images."""
    list_file = _list_file(folder, "train")
    ids = list_file.read_text().split()
    list_file.write_bytes(("\r\n  \r\n\t\n".join(ids) + "\r\n\r\nx\ny\n\n").encode())
    index = read_voc_folder(folder, "auto")
    assert index.splits["train"] == [*ids, "x", "y"]
    missing = {p.id for p in check_index(index) if p.problem == "image missing"}
    assert missing == {"x", "y"}


# ---- ids in a hand-edited index ----------------------------------------------------------------

@pytest.mark.parametrize("policy", ["stop", "skip"])
@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_hand_edited_index_id_is_refused_under_either_policy(folder: Path, tmp_path: Path, name: str,
                                                             policy: str) -> None:
    path = tmp_path / "index.json"
    _prepare(folder, path)
    data = json.loads(path.read_text())
    data["splits"]["train"].append(name)
    data["labels"][name] = [1]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        check_dataset.main(["--index", str(path), "--policy", policy, "--report", str(tmp_path / "report.csv"),
                            "--out-index", str(tmp_path / "checked.json"), "--no-progress"])
    assert str(path) in str(info.value) and repr(name) in str(info.value)
    assert not (tmp_path / "checked.json").exists()


@pytest.mark.parametrize("key, value", [("image_dir", "../../outside"), ("scribble_dir", "/etc"),
                                        ("mask_dirs", {"train": "../x"}), ("image_ext", "/../../x.jpg")])
def test_hand_edited_index_folder_names_are_refused(folder: Path, tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "index.json"
    _prepare(folder, path)
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=key):
        DatasetIndex.load(path)


# ---- the label PNG writer ----------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_label_writer_refuses_id(tmp_path: Path, name: str) -> None:
    out = tmp_path / "a" / "b" / "labels"
    with pytest.raises(ValueError, match="plain file name"):
        write_label(label_path(out, name), np.zeros((4, 4), np.uint8))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("name", [".hidden", "..", "x\ny", "x\x00y", "a\\b"])
def test_label_writer_refuses_file_name_that_is_no_id(tmp_path: Path, name: str) -> None:
    """Even a caller that builds the path itself cannot write a hidden or control-character name."""
    with pytest.raises(ValueError, match="plain file name"):
        write_label(tmp_path / f"{name}.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ---- symbolic links leading outside the folder -------------------------------------------------

def _first_train_id(root: Path) -> str:
    return _list_file(root, "train").read_text().split()[0]


def _link_out(root: Path, kind: str) -> Path:
    """Move one file of ``kind`` (image, mask, scribble, images folder, list file, list folder, class
    list, image labels) outside ``root`` and leave a symbolic link in its place; return the link."""
    image_id = _first_train_id(root)
    path = {"image": root / "JPEGImages" / f"{image_id}.jpg",
            "mask": root / "SegmentationClass" / f"{image_id}.png",
            "scribble": root / "Scribbles" / f"{image_id}.png",
            "image_folder": root / "JPEGImages",
            "split_list": _list_file(root, "val"),
            "split_list_folder": root / "ImageSets",
            "class_list": root / "classes.txt",
            "image_labels": root / "image_labels.json"}[kind]
    target = root.parent.parent / "outside" / path.name
    shutil.move(path, target)
    path.symlink_to(target, target_is_directory=target.is_dir())
    return path


@pytest.mark.parametrize("kind", ["image", "mask", "scribble", "image_folder", "split_list", "split_list_folder",
                                  "class_list", "image_labels"])
def test_link_outside_is_refused_unless_allowed(folder: Path, tmp_path: Path, kind: str) -> None:
    link = _link_out(folder, kind)
    with pytest.raises(ValueError) as info:
        _prepare(folder, tmp_path / "index.json")
    message = str(info.value)
    assert str(link) in message and "follow_symlinks_outside" in message
    assert not (tmp_path / "index.json").exists()

    _prepare(folder, tmp_path / "index.json", "--follow-symlinks-outside")
    assert check_index(DatasetIndex.load(tmp_path / "index.json")) == []


def test_link_inside_the_folder_is_fine(folder: Path) -> None:
    image_id = _first_train_id(folder)
    image = folder / "JPEGImages" / f"{image_id}.jpg"
    (folder / "originals").mkdir()
    shutil.move(image, folder / "originals" / image.name)
    image.symlink_to(Path("..") / "originals" / image.name)
    index = read_voc_folder(folder, "auto")
    assert check_index(index) == []


def test_shared_sample_holds_no_links_and_indexes(voc_sample: Path) -> None:
    assert not [p for p in voc_sample.rglob("*") if p.is_symlink()]
    assert os.path.realpath(read_voc_folder(voc_sample, "auto").root) == os.path.realpath(voc_sample)
