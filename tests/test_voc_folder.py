"""VOC-layout folders: the shared voc-sample read in place, labels from JSON / XML / masks, and
VOC 2012 prepared offline from a tiny fake devkit and from already-downloaded archives."""
from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import prepare_dataset
from stages.data.checks import check_index
from stages.data.data_folder import DataFolder
from stages.data.index import VOC_CLASSES, DatasetIndex
from stages.data.scribbles import render_scribblesup_xml
from stages.data.toy import generate_toy
from stages.data.voc_folder import labels_from_xml, prepare_voc, read_voc_folder
from stages.io.label_png import IGNORE, read_label, write_label

CLASS = {name: i for i, name in enumerate(VOC_CLASSES)}
NOWHERE = "http://127.0.0.1:9"  # nothing listens there: any request would fail the test
# id -> foreground classes drawn in its masks
FAKE_IDS = {"2008_000001": ["person"], "2008_000002": ["dog", "person"], "2008_000003": ["cat"],
            "2008_000004": ["diningtable"], "2008_000005": ["car", "bus"]}
FAKE_TRAIN, FAKE_VAL = ["2008_000001", "2008_000002"], ["2008_000004", "2008_000005"]


# ---- the shared sample ---------------------------------------------------------------------

def test_voc_sample_labels_from_json_equal_labels_from_masks(voc_sample: Path) -> None:
    from_json = read_voc_folder(voc_sample, "json")
    from_masks = read_voc_folder(voc_sample, "masks")
    assert len(from_json.splits["train"]) == 60 and len(from_json.splits["val"]) == 60
    assert from_json.splits["train_aug"] == from_json.splits["train"]
    assert from_json.labels == from_masks.labels
    assert len(from_json.labels) == 120 and all(from_json.labels.values())
    assert from_json.root == voc_sample.resolve() and from_json.scribble_dir is None
    assert from_json.classes == list(VOC_CLASSES) and from_json.mask_dirs == {}


def test_voc_sample_through_the_cli_is_clean(voc_sample: Path, tmp_path: Path) -> None:
    prepare_dataset.main(["--kind", "folder", "--index", str(tmp_path / "i.json"), "--path", str(voc_sample),
                          "--labels", "auto", "--no-progress"])
    index = DatasetIndex.load(tmp_path / "i.json")
    assert index.name == "voc-sample" and index.labels == read_voc_folder(voc_sample, "json").labels
    assert check_index(index) == []


def test_toy_root_reads_as_a_folder(tmp_path: Path) -> None:
    toy = generate_toy(tmp_path / "toy", num_classes=4, num_train_aug=6, num_train=2, num_val=3,
                       min_size=64, max_size=80, seed=1)
    folder = read_voc_folder(toy.root, "masks")
    assert folder.classes == toy.classes and folder.labels == toy.labels
    assert folder.splits == toy.splits and folder.scribble_dir == "Scribbles"
    assert read_voc_folder(toy.root, "json").labels == toy.labels


# ---- a tiny fake VOC ---------------------------------------------------------------------

def _annotation(image_id: str, names: list[str]) -> str:
    objects = "".join(
        f"<object><name>{n}</name><difficult>{k % 2}</difficult>"
        f"<part><name>head</name></part></object>" for k, n in enumerate(names))
    return f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>"


def _make_voc2012(root: Path, with_aug: bool) -> Path:
    """VOC2012-like folder: images, banded masks, Aug masks (optional), XML, train/val lists."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for k, (image_id, names) in enumerate(FAKE_IDS.items()):
        h, w = 40 + 4 * k, 56
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((h, w), np.uint8)
        for j, name in enumerate(names):
            mask[5:20, 5 + 25 * j:25 + 25 * j] = CLASS[name]
        if with_aug:
            write_label(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        banded = mask.copy()
        banded[4, :] = IGNORE
        write_label(root / "SegmentationClass" / f"{image_id}.png", banded)
        (root / "Annotations" / f"{image_id}.xml").write_text(_annotation(image_id, names))
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(FAKE_TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(FAKE_VAL) + "\n")
    return root


def _expected_labels() -> dict[str, list[int]]:
    return {i: sorted(CLASS[n] for n in names) for i, names in FAKE_IDS.items()}


def test_xml_labels_ignore_parts_and_keep_difficult_objects(tmp_path: Path) -> None:
    voc = _make_voc2012(tmp_path / "VOC2012", with_aug=False)
    folder = DataFolder(voc, "dataset.folder")
    labels = labels_from_xml(folder, voc / "Annotations", list(VOC_CLASSES), list(FAKE_IDS) + ["no_xml"])
    assert labels == _expected_labels()
    (voc / "Annotations" / "2008_000001.xml").write_text(_annotation("2008_000001", ["unicorn"]))
    with pytest.raises(ValueError, match=r"2008_000001\.xml.*unicorn"):
        labels_from_xml(folder, voc / "Annotations", list(VOC_CLASSES), ["2008_000001"])


def test_devkit_is_read_in_place_without_network(tmp_path: Path) -> None:
    devkit = _make_voc2012(tmp_path / "VOCdevkit" / "VOC2012", with_aug=True)
    archives = {"voc2012_trainval": {"url": f"{NOWHERE}/VOCtrainval_11-May-2012.tar",
                                     "md5": "6cd6e144f989b92b3379bac3b3de84fd"}}
    prepare_dataset.main(["--kind", "voc", "--index", str(tmp_path / "i.json"),
                          "--root", str(tmp_path / "root"),
                          "--devkit", str(devkit), "--download-dir", str(tmp_path / "dl"), "--retries", "0",
                          "--archives", json.dumps(archives), "--no-progress"])
    index = DatasetIndex.load(tmp_path / "i.json")
    assert index.name == "voc" and index.root == devkit.resolve()
    assert index.splits["train_aug"] == ["2008_000001", "2008_000002", "2008_000003"]
    assert index.splits["train"] == FAKE_TRAIN and index.splits["val"] == FAKE_VAL
    assert index.mask_dirs == {"train_aug": "SegmentationClassAug"}
    assert index.mask_path("2008_000003", "train_aug").parent.name == "SegmentationClassAug"
    assert index.labels == _expected_labels()
    assert not (tmp_path / "dl").exists() and not (tmp_path / "root").exists()
    assert check_index(index) == []


def test_devkit_with_aug_masks_linked_from_elsewhere_needs_the_option(tmp_path: Path) -> None:
    """A common setup links SegmentationClassAug into the devkit: refused by default (it leads
    outside the folder), read with follow_symlinks_outside. Hidden files there are no masks."""
    devkit = _make_voc2012(tmp_path / "VOC2012", with_aug=True)
    aug = tmp_path / "elsewhere" / "SegmentationClassAug"
    aug.parent.mkdir()
    (devkit / "SegmentationClassAug").rename(aug)
    (devkit / "SegmentationClassAug").symlink_to(aug, target_is_directory=True)
    (aug / "._2008_000001.png").write_bytes(b"AppleDouble junk")
    with pytest.raises(ValueError, match=r"SegmentationClassAug.*dataset\.voc\.follow_symlinks_outside"):
        prepare_voc(tmp_path / "r", tmp_path / "dl", {}, 0, devkit=devkit, progress=False)
    index = prepare_voc(tmp_path / "r", tmp_path / "dl", {}, 0, devkit=devkit, progress=False,
                        follow_symlinks_outside=True)
    assert index.splits["train_aug"] == ["2008_000001", "2008_000002", "2008_000003"]
    assert check_index(index) == []


def test_annotation_xml_linked_from_elsewhere_needs_the_option(tmp_path: Path) -> None:
    devkit = _make_voc2012(tmp_path / "VOC2012", with_aug=False)
    xml = devkit / "Annotations" / "2008_000002.xml"
    outside = tmp_path / "elsewhere.xml"
    xml.rename(outside)
    xml.symlink_to(outside)
    with pytest.raises(ValueError, match=rf"{xml}.*dataset\.voc\.follow_symlinks_outside"):
        prepare_voc(tmp_path / "r", tmp_path / "dl", {}, 0, devkit=devkit, progress=False)
    index = prepare_voc(tmp_path / "r", tmp_path / "dl", {}, 0, devkit=devkit, progress=False,
                        follow_symlinks_outside=True)
    assert index.labels["2008_000002"] == _expected_labels()["2008_000002"]


def test_devkit_without_aug_uses_train_as_train_aug(tmp_path: Path) -> None:
    index = prepare_voc(tmp_path / "r", tmp_path / "dl", {}, 0,
                        devkit=_make_voc2012(tmp_path / "VOC2012", with_aug=False), progress=False)
    assert index.splits["train_aug"] == FAKE_TRAIN and index.mask_dirs == {}


def _scribble_xml(names: list[str]) -> str:
    polygons = "".join(
        f"<polygon><tag>{tag}</tag><point><X>{6 + 25 * j}</X><Y>12</Y></point>"
        f"<point><X>{20 + 25 * j}</X><Y>12</Y></point></polygon>"
        for j, tag in enumerate(names))
    background = ("<polygon><tag>background</tag><point><X>3</X><Y>30</Y></point>"
                  "<point><X>50</X><Y>30</Y></point></polygon>")
    return f"<annotation>{polygons}{background}</annotation>"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_voc_from_downloaded_archives_needs_no_network(tmp_path: Path) -> None:
    build = tmp_path / "build"
    voc = _make_voc2012(build / "VOCdevkit" / "VOC2012", with_aug=False)
    _make_voc2012(build / "aug_source", with_aug=True)
    dl = tmp_path / "dl"
    dl.mkdir()
    with tarfile.open(dl / "VOCtrainval_11-May-2012.tar", "w") as tf:
        tf.add(voc, arcname="VOCdevkit/VOC2012")
    with zipfile.ZipFile(dl / "SegmentationClassAug.zip", "w") as zf:
        for png in sorted((build / "aug_source" / "SegmentationClassAug").glob("*.png")):
            zf.write(png, f"SegmentationClassAug/{png.name}")
            zf.writestr(f"__MACOSX/SegmentationClassAug/._{png.name}", b"junk")
    short_tags = {"diningtable": "table"}  # ScribbleSup's spelling
    with zipfile.ZipFile(dl / "scribble_annotation.zip", "w") as zf:
        for image_id, names in FAKE_IDS.items():
            zf.writestr(f"scribble_annotation/pascal_2012/{image_id}.xml",
                        _scribble_xml([short_tags.get(n, n) for n in names]))
            zf.writestr(f"scribble_annotation/pascal_context/{image_id}.xml", "<annotation/>")
    archives = {
        "voc2012_trainval": {"url": f"{NOWHERE}/VOCtrainval_11-May-2012.tar",
                             "md5": _md5(dl / "VOCtrainval_11-May-2012.tar")},
        "segmentation_class_aug": {"url": f"{NOWHERE}/s/x/SegmentationClassAug.zip?dl=1", "md5": None},
        "scribbles": {"url": f"{NOWHERE}/scribble_annotation.zip", "md5": None},
    }
    root = tmp_path / "voc"
    index = prepare_voc(root, dl, archives, retries=0, progress=False)
    assert index.root == (root / "voc2012_trainval" / "VOCdevkit" / "VOC2012").resolve()
    assert index.splits["train_aug"] == ["2008_000001", "2008_000002", "2008_000003"]
    assert index.scribble_dir == "Scribbles" and index.labels == _expected_labels()
    assert check_index(index) == []
    for image_id, names in FAKE_IDS.items():
        scribble = read_label(index.scribble_path(image_id))
        mask = read_label(index.mask_path(image_id, "train_aug"))
        strokes = scribble != IGNORE
        assert set(np.unique(scribble[strokes])) == {0, *(CLASS[n] for n in names)}
        assert (scribble[strokes] == mask[strokes]).all()  # the fake strokes lie inside their boxes
        assert 2 <= (scribble[:, 12] == scribble[12, 12]).sum() <= 4  # 3 px wide
    again = prepare_voc(root, dl, archives, retries=0, progress=False)
    assert again == index


def test_scribble_xml_with_an_unknown_tag_is_an_error(tmp_path: Path) -> None:
    xml = tmp_path / "x.xml"
    xml.write_text(_scribble_xml(["unicorn"]))
    with pytest.raises(ValueError, match=r"x\.xml.*unicorn"):
        render_scribblesup_xml(xml, (40, 56), CLASS)


def test_unknown_archive_name_and_missing_lists_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cls_labels"):
        prepare_voc(tmp_path, tmp_path, {"cls_labels": {"url": f"{NOWHERE}/x.npy", "md5": None}}, 0)
    voc = _make_voc2012(tmp_path / "VOC2012", with_aug=False)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(ValueError, match="val.txt"):
        read_voc_folder(voc, "auto")
    with pytest.raises(ValueError, match="JPEGImages"):
        read_voc_folder(tmp_path / "nothing", "auto")
