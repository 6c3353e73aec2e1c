"""COCO 2014: the RLE and polygon decoders, and a hand-made COCO folder (images made here, an
instances JSON written here, with polygons, both RLE forms, overlaps, a tie and a crowd region)
turned into masks, labels and splits that match hand-computed ones; bad inputs; the offline
download path; prepare + check through the stage CLIs. Nothing is downloaded."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import check_dataset, prepare_dataset
from stages.data.coco import ARCHIVE_FOLDERS, prepare_coco
from stages.data.coco_masks import decode_rle, rasterise_polygons, rle_string_counts, semantic_mask
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.label_png import read_label

NOWHERE = "http://127.0.0.1:9"  # nothing listens there: any request would fail the test
# Category ids out of order and with gaps: classes follow the ids (2 -> 1, 5 -> 2, 9 -> 3).
CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 2, "name": "person"}, {"id": 9, "name": "traffic light"}]
CLASSES = ["background", "person", "cat", "traffic light"]
PERSON, CAT, LIGHT = 2, 5, 9  # category ids


def rect(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """A rectangle polygon; it covers pixels x0..x1-1, y0..y1-1 (their centres are inside)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


# id -> (width, height, annotations as (annotation id, category id, segmentation, area, iscrowd))
TRAIN = {
    "COCO_train2014_000000000001": (8, 6, [
        (10, PERSON, [rect(0, 0, 6, 4)], 24, 0),
        (11, CAT, [rect(4, 2, 8, 6)], 16, 0),  # smaller than the person: wins their overlap
        # crowd, uncompressed RLE down the columns: columns 0 and 1 hold rows 3..5
        (12, LIGHT, {"counts": [3, 3, 3, 3, 36], "size": [6, 8]}, 6, 1),
    ]),
    "COCO_train2014_000000000002": (5, 4, [
        # compressed RLE of the runs 5, 3, 2, 6, 4 (the last two stored as differences 3 and 2)
        (20, CAT, {"counts": "53232", "size": [4, 5]}, 9, 0),
        (21, PERSON, [rect(0, 0, 2, 2), rect(4, 2, 5, 4)], 6, 0),  # two parts
        (22, LIGHT, [rect(3, 0, 5, 3)], 6, 0),  # the person's area: the person, listed first, wins
    ]),
    "COCO_train2014_000000000003": (6, 5, []),  # no annotation: left out
    "COCO_train2014_000000000004": (6, 5, [(40, CAT, [[1, 1, 3, 3]], 0, 0)]),  # no pixel: left out
}
VAL = {
    "COCO_val2014_000000000010": (4, 3, [(30, PERSON, [rect(1, 0, 3, 3)], 6, 0)]),
    "COCO_val2014_000000000011": (4, 3, [(31, CAT, [rect(0, 0, 4, 3)], 12, 0)]),
}
P, C, L = 1, 2, 3  # class indices
EXPECTED = {
    "COCO_train2014_000000000001": [[P, P, P, P, P, P, 0, 0],
                                    [P, P, P, P, P, P, 0, 0],
                                    [P, P, P, P, C, C, C, C],
                                    [L, L, P, P, C, C, C, C],
                                    [L, L, 0, 0, C, C, C, C],
                                    [L, L, 0, 0, C, C, C, C]],
    "COCO_train2014_000000000002": [[P, P, 0, L, L],
                                    [P, P, 0, L, L],
                                    [0, C, C, L, P],
                                    [0, C, C, C, P]],
    "COCO_val2014_000000000010": [[0, P, P, 0]] * 3,
    "COCO_val2014_000000000011": [[C] * 4] * 3,
}


def write_split(folder: Path, name: str, images: dict, categories: list = CATEGORIES) -> None:
    (folder / name).mkdir(parents=True)
    (folder / "annotations").mkdir(exist_ok=True)
    entries, annotations = [], []
    for number, (image_id, (width, height, anns)) in enumerate(images.items(), 1):
        Image.new("RGB", (width, height), (number * 40, 90, 160)).save(folder / name / f"{image_id}.jpg")
        entries.append({"id": number, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        annotations += [{"id": ann_id, "image_id": number, "category_id": category, "segmentation": segmentation,
                         "area": area, "iscrowd": crowd} for ann_id, category, segmentation, area, crowd in anns]
    data = {"images": entries, "annotations": annotations, "categories": categories}
    (folder / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    folder = tmp_path / "coco"
    write_split(folder, "train2014", TRAIN)
    write_split(folder, "val2014", VAL)
    return folder


def prepare(folder: Path | None, root: Path, **caps) -> DatasetIndex:
    return prepare_coco(root, folder, root / "downloads", {}, 0, progress=False, **caps)


# ---- decoders ------------------------------------------------------------------------------

def test_rle_string_counts_decode_multi_character_and_negative_differences() -> None:
    assert rle_string_counts("53232", "x") == [5, 3, 2, 6, 4]
    # 20 needs two characters ('d' = 48 + (20 | 0x20), then '0'), since 0x10 is the sign bit; the
    # counts after the third are differences: 20, 1, 60, 48, -96 ('PM': 0 | 0x20, then -3 & 0x1f)
    assert rle_string_counts("3d01d01l1`1PM", "x") == [3, 20, 1, 40, 2, 100, 50, 4]
    for bad in ("3d", "3~"):
        with pytest.raises(InputError, match="where"):
            rle_string_counts(bad, "where")


def test_rle_runs_go_down_the_columns() -> None:
    mask = decode_rle({"counts": [1, 2, 3], "size": [2, 3]}, 2, 3, "x")
    assert mask.astype(int).tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(InputError, match="cover 5 pixels"):
        decode_rle({"counts": [1, 4], "size": [2, 3]}, 2, 3, "x")
    with pytest.raises(InputError, match="not the image's"):
        decode_rle({"counts": [6], "size": [3, 2]}, 2, 3, "x")


def test_polygon_pixels_are_those_whose_centre_is_inside() -> None:
    triangle = rasterise_polygons([[0, 0, 4, 0, 0, 4]], 5, 5, "x")  # x + y < 4 at the centres
    assert triangle.astype(int).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                                             [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    square = rasterise_polygons([rect(1, 1, 3, 4), [0, 0, 5, 5]], 5, 5, "x")  # a 2-point "polygon" is skipped
    assert np.argwhere(square).tolist() == [[y, x] for y in (1, 2, 3) for x in (1, 2)]
    with pytest.raises(InputError, match="flat list"):
        rasterise_polygons([[0, 0, 4]], 5, 5, "x")


def test_smaller_instance_wins_and_ties_go_to_the_first() -> None:
    big, small = np.ones((1, 3), bool), np.array([[0, 1, 1]], bool)
    assert semantic_mask([(1, 3, big), (2, 2, small)], 1, 3).tolist() == [[1, 2, 2]]
    assert semantic_mask([(2, 2, small), (1, 3, big)], 1, 3).tolist() == [[1, 2, 2]]
    assert semantic_mask([(1, 2, small), (2, 2, small)], 1, 3).tolist() == [[0, 1, 1]]


# ---- the hand-made folder -------------------------------------------------------------------

def test_masks_labels_and_splits_match_hand_computed(coco: Path, tmp_path: Path) -> None:
    index = prepare(coco, tmp_path / "out")
    assert index.classes == CLASSES and index.root == (tmp_path / "out").resolve()
    train = ["COCO_train2014_000000000001", "COCO_train2014_000000000002"]
    assert index.splits == {"train_aug": train, "train": train,
                            "val": ["COCO_val2014_000000000010", "COCO_val2014_000000000011"]}
    for image_id, expected in EXPECTED.items():
        assert read_label(index.mask_path(image_id, "val")).tolist() == expected, image_id
        with Image.open(index.image_path(image_id)) as im:
            assert im.size == tuple(TRAIN.get(image_id, VAL.get(image_id))[:2])
    assert index.labels == {train[0]: [P, C, L], train[1]: [P, C, L], "COCO_val2014_000000000010": [P],
                            "COCO_val2014_000000000011": [C]}
    assert index.image_path(train[0]).is_symlink()  # the COCO folder is read in place, never copied
    mask = index.mask_path(train[0], "train")
    before = mask.stat().st_mtime_ns
    assert prepare(coco, tmp_path / "out") == index and mask.stat().st_mtime_ns == before  # reused


def test_caps_keep_the_first_images(coco: Path, tmp_path: Path) -> None:
    index = prepare(coco, tmp_path / "out", max_train_aug=2, max_train=1, max_val=1)
    assert index.splits == {"train_aug": ["COCO_train2014_000000000001", "COCO_train2014_000000000002"],
                            "train": ["COCO_train2014_000000000001"], "val": ["COCO_val2014_000000000010"]}
    assert sorted(index.labels) == sorted({*index.splits["train_aug"], *index.splits["val"]})
    with pytest.raises(InputError, match="at least 1"):
        prepare(coco, tmp_path / "out", max_val=0)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "annotations" / "instances_val2014.json").unlink(), "instances_val2014.json: instances JSON"),
    (lambda f: (f / "train2014" / "COCO_train2014_000000000002.jpg").unlink(),
     "COCO_train2014_000000000002.jpg, which is missing"),
    (lambda f: _edit_json(f / "annotations" / "instances_train2014.json",
                          lambda d: d["annotations"][0].update(category_id=3)),
     "instances_train2014.json: annotation 10: category_id 3 is not one"),
    (lambda f: _edit_json(f / "annotations" / "instances_val2014.json",
                          lambda d: d["images"][0].update(file_name="../x.jpg")),
     "instances_val2014.json: image 1: id '../x.jpg' contains a path separator"),
    (lambda f: _edit_json(f / "annotations" / "instances_train2014.json",
                          lambda d: d["annotations"][2]["segmentation"].update(size=[8, 6])),
     "instances_train2014.json: annotation 12: RLE size"),
    (lambda f: _edit_json(f / "annotations" / "instances_val2014.json", lambda d: d["categories"].pop()),
     "list different categories"),
])
def test_bad_inputs_are_refused_naming_the_file(coco: Path, tmp_path: Path, breakage, message: str) -> None:
    breakage(coco)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        prepare(coco, tmp_path / "out")


@pytest.mark.parametrize("linked", ["annotations/instances_val2014.json", "train2014"])
def test_files_linked_from_outside_the_folder_need_the_option(coco: Path, tmp_path: Path, linked: str) -> None:
    """An instances JSON or an image folder that is a symbolic link out of the COCO folder is refused,
    naming it, unless follow_symlinks_outside: the data set must not make the pipeline read elsewhere."""
    link, outside = coco / linked, tmp_path / "elsewhere" / Path(linked).name
    outside.parent.mkdir()
    link.rename(outside)
    link.symlink_to(outside)
    with pytest.raises(InputError, match=r"dataset\.coco\.follow_symlinks_outside") as info:
        prepare(coco, tmp_path / "out")
    assert str(info.value).startswith(f"{link}")
    index = prepare_coco(tmp_path / "out", coco, tmp_path / "downloads", {}, 0, progress=False,
                         follow_symlinks_outside=True)
    assert index.splits["val"] == list(VAL) and len(index.splits["train_aug"]) == 2


def test_archives_already_downloaded_need_no_network(coco: Path, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archives = {}
    for name, inner in ARCHIVE_FOLDERS.items():
        path = downloads / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for file in sorted((coco / inner).iterdir()):
                zf.write(file, f"{inner}/{file.name}")
        archives[name] = {"url": f"{NOWHERE}/{name}.zip", "md5": hashlib.md5(path.read_bytes()).hexdigest()}
    index = prepare_coco(tmp_path / "out", None, downloads, archives, 0, progress=False)
    assert index.splits == prepare(coco, tmp_path / "in_place").splits
    assert read_label(index.mask_path("COCO_val2014_000000000010", "val")).tolist() == EXPECTED[
        "COCO_val2014_000000000010"]
    assert (tmp_path / "out" / "coco2014" / "annotations" / "instances_val2014.json").is_file()
    for archive in downloads.iterdir():
        archive.unlink()  # once unpacked, the archives are not needed any more
    assert prepare_coco(tmp_path / "out", None, downloads, archives, 0, progress=False) == index
    with pytest.raises(InputError, match="exactly"):
        prepare_coco(tmp_path / "out", None, downloads, {"train2014": archives["train2014"]}, 0, progress=False)


def test_prepare_and_check_through_the_stage_clis(coco: Path, tmp_path: Path) -> None:
    raw, checked = tmp_path / "index.json", tmp_path / "index.checked.json"
    prepare_dataset.main(["--kind", "coco", "--index", str(raw), "--root", str(tmp_path / "out"),
                          "--download-dir", str(tmp_path / "downloads"), "--retries", "0", "--archives", "{}",
                          "--path", str(coco), "--max-val", "1", "--no-progress"])
    check_dataset.main(["--index", str(raw), "--policy", "stop", "--report", str(tmp_path / "report.csv"),
                        "--out-index", str(checked), "--no-progress"])
    index = DatasetIndex.load(checked)
    assert index.classes == CLASSES and len(index.splits["val"]) == 1 and len(index.splits["train_aug"]) == 2
