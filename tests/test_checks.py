"""check_dataset on corrupted copies of a tiny toy set: every kind of problem is reported in one
report, policy stop fails naming them, policy skip drops them; odd but valid inputs pass."""
from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from stages import check_dataset
from stages.data.checks import check_index, drop_images
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.errors import InputError
from stages.io.label_png import read_label, write_label


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> DatasetIndex:
    return generate_toy(tmp_path_factory.mktemp("toy") / "data", num_classes=4, num_train_aug=10, num_train=3,
                        num_val=4, min_size=64, max_size=96, seed=5)


@pytest.fixture
def toy(pristine: DatasetIndex, tmp_path: Path) -> DatasetIndex:
    """A private copy of the tiny toy set, free to corrupt."""
    shutil.copytree(pristine.root, tmp_path / "data")
    return dataclasses.replace(pristine, root=(tmp_path / "data").resolve(),
                               splits={k: list(v) for k, v in pristine.splits.items()},
                               labels={k: list(v) for k, v in pristine.labels.items()})


def _run(index: DatasetIndex, tmp_path: Path, policy: str) -> tuple[list[dict], Path]:
    index.save(tmp_path / "in.json")
    out = tmp_path / "out.json"
    check_dataset.main(["--index", str(tmp_path / "in.json"), "--policy", policy, "--report",
                        str(tmp_path / "report.csv"), "--out-index", str(out), "--no-progress"])
    return _report(tmp_path), out


def _report(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "report.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _corrupt(index: DatasetIndex) -> dict[str, str]:
    """Break one image per problem kind; return id -> expected words in its problem."""
    ids = index.splits["train_aug"]
    truncated, wrong_size, bad_value, no_mask, no_fg, twice = ids[3:9]
    jpeg = index.image_path(truncated)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    mask = read_label(index.mask_path(wrong_size, "train_aug"))
    write_label(index.mask_path(wrong_size, "train_aug"), mask[:-3])
    mask = read_label(index.mask_path(bad_value, "train_aug"))
    mask[0, 0] = 37
    write_label(index.mask_path(bad_value, "train_aug"), mask)
    index.mask_path(no_mask, "train_aug").unlink()
    index.labels[no_fg] = []
    index.splits["train_aug"].append(twice)
    return {truncated: "cannot read image", wrong_size: "size", bad_value: "37", no_mask: "mask missing",
            no_fg: "no foreground", twice: "listed 2 times"}


def test_clean_set_gives_header_only_report_and_same_index(toy: DatasetIndex, tmp_path: Path) -> None:
    rows, out = _run(toy, tmp_path, "stop")
    assert rows == []
    assert (tmp_path / "report.csv").read_text().strip() == "id,split,file,problem,severity"
    assert DatasetIndex.load(out) == toy


def test_every_problem_is_reported_and_stop_fails(toy: DatasetIndex, tmp_path: Path) -> None:
    expected = _corrupt(toy)
    toy.splits["extra"] = []
    with pytest.raises(InputError) as exc:
        _run(toy, tmp_path, "stop")
    message = str(exc.value)
    assert "report.csv" in message and "problem(s)" in message
    assert not (tmp_path / "out.json").exists()
    rows = _report(tmp_path)
    for image_id, words in expected.items():
        assert any(r["id"] == image_id and words in r["problem"] for r in rows), (image_id, rows)
    assert any(r["id"] == "" and r["split"] == "extra" and "empty" in r["problem"] for r in rows)
    truncated_row = next(r for r in rows if "cannot read image" in r["problem"])
    assert truncated_row["file"].endswith(".jpg")
    assert len({r["id"] for r in rows}) == len(expected) + 1
    assert {r["severity"] for r in rows} == {"error"}


def test_skip_drops_bad_images_from_every_split(toy: DatasetIndex, tmp_path: Path) -> None:
    expected = _corrupt(toy)
    train_id = toy.splits["train"][0]
    toy.image_path(train_id).write_bytes(b"not a jpeg")  # listed in train and train_aug
    rows, out = _run(toy, tmp_path, "skip")
    checked = DatasetIndex.load(out)
    dropped = set(expected) | {train_id}
    assert {r["id"] for r in rows} == dropped
    assert next(r for r in rows if r["id"] == train_id)["split"] == "train_aug train"
    for split, ids in checked.splits.items():
        assert not set(ids) & dropped and len(ids) == len(set(ids))
        assert ids == [i for i in dict.fromkeys(toy.splits[split]) if i not in dropped]
    assert not set(checked.labels) & dropped
    assert check_index(checked) == []


def test_skip_that_empties_a_split_still_stops(toy: DatasetIndex, tmp_path: Path) -> None:
    for image_id in toy.splits["val"]:
        toy.mask_path(image_id, "val").unlink()
    with pytest.raises(InputError, match="val"):
        _run(toy, tmp_path, "skip")
    assert not (tmp_path / "out.json").exists()


def test_missing_image_and_label_and_scribble_problems(toy: DatasetIndex) -> None:
    a, b, c = toy.splits["val"][:3]
    toy.image_path(a).unlink()
    del toy.labels[b]
    scribble = read_label(toy.scribble_path(c))
    scribble[1, 1] = 9
    write_label(toy.scribble_path(c), scribble)
    toy.scribble_path(toy.splits["val"][3]).unlink()  # missing scribbles are not a problem
    problems = {p.id: p.problem for p in check_index(toy)}
    assert problems == {a: "image missing", b: "no image-level label",
                        c: "scribble has values [9] outside 0..4 and 255"}


def test_grayscale_cmyk_and_non_ascii_ids_pass(toy: DatasetIndex) -> None:
    gray_id, cmyk_id, old_id = toy.splits["val"][:3]
    rgb = Image.open(toy.image_path(gray_id))
    rgb.convert("L").save(toy.image_path(gray_id), quality=90)
    Image.open(toy.image_path(cmyk_id)).convert("CMYK").save(toy.image_path(cmyk_id), quality=90)
    assert Image.open(toy.image_path(cmyk_id)).mode == "CMYK"
    new_id = "Ünïcødé_βild 01"
    toy.image_path(old_id).rename(toy.image_path(new_id))
    toy.mask_path(old_id, "val").rename(toy.mask_path(new_id, "val"))
    toy.scribble_path(old_id).rename(toy.scribble_path(new_id))
    toy.splits["val"] = [new_id if i == old_id else i for i in toy.splits["val"]]
    toy.labels[new_id] = toy.labels.pop(old_id)
    assert check_index(toy) == []
    broken = read_label(toy.mask_path(new_id, "val"))
    broken[0, 0] = 200
    write_label(toy.mask_path(new_id, "val"), broken)
    problems = check_index(toy)
    assert [p.id for p in problems] == [new_id] and new_id in problems[0].file


def test_drop_images_keeps_order_and_collapses_duplicates(toy: DatasetIndex) -> None:
    toy.splits["val"].append(toy.splits["val"][0])
    first = toy.splits["val"][1]
    dropped = drop_images(toy, {first})
    assert dropped.splits["val"] == [i for i in toy.splits["val"][:-1] if i != first]
    assert first not in dropped.labels and first in toy.labels


# ---- EXIF orientation: pixels are used as stored, the tag is reported -------------------------

def _photo_with_orientation(path: Path, orientation: int, size: tuple[int, int] = (64, 40)) -> np.ndarray:
    """A JPEG of ``size`` (WxH) stored pixels carrying an EXIF orientation tag; returns its pixels."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[: size[1] // 2, : size[0] // 4] = 255  # a bright block in the stored top-left corner
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    return load_rgb(path)


def _mask_for(index: DatasetIndex, image_id: str, height: int, width: int) -> None:
    """A mask and scribble of HxW for ``image_id``, the class over the bright block."""
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2, : width // 4] = index.labels[image_id][0]
    write_label(index.mask_path(image_id, "val"), mask)
    write_label(index.scribble_path(image_id), mask)


def test_readers_return_stored_pixels_ignoring_exif_orientation(tmp_path: Path) -> None:
    pixels = _photo_with_orientation(tmp_path / "photo.jpg", 6)
    with Image.open(tmp_path / "photo.jpg") as im:
        assert im.getexif()[0x0112] == 6
        viewed = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert pixels.shape == (40, 64, 3) and viewed.shape == (64, 40, 3)
    assert pixels[:20, :16].mean() > 200 and pixels[20:, 16:].mean() < 50  # not turned
    mask = Image.fromarray(np.eye(5, 7, dtype=np.uint8), mode="L")
    exif = mask.getexif()
    exif[0x0112] = 6
    mask.save(tmp_path / "mask.png", exif=exif)
    assert np.array_equal(read_label(tmp_path / "mask.png"), np.eye(5, 7, dtype=np.uint8))


def test_exif_orientation_is_a_warning_with_the_rule(toy: DatasetIndex, tmp_path: Path) -> None:
    image_id = toy.splits["val"][0]
    _photo_with_orientation(toy.image_path(image_id), 6)
    _mask_for(toy, image_id, 40, 64)  # drawn on the stored pixels, as VOC masks are
    rows, out = _run(toy, tmp_path, "stop")
    assert [(r["id"], r["severity"]) for r in rows] == [(image_id, "warning")]
    assert rows[0]["file"] == str(toy.image_path(image_id))
    assert rows[0]["problem"] == ("EXIF orientation 6 (rotate 90 clockwise) ignored: pixels are used as stored, "
                                  "like VOC; rotate the file itself (e.g. exiftran -ai) if its mask was drawn "
                                  "on the rotated view")
    assert image_id in DatasetIndex.load(out).ids("val")  # a warning drops nothing


def test_mask_drawn_on_the_rotated_view_is_explained(toy: DatasetIndex, tmp_path: Path) -> None:
    image_id = toy.splits["val"][0]
    _photo_with_orientation(toy.image_path(image_id), 8)
    _mask_for(toy, image_id, 64, 40)  # drawn on what a viewer shows: transposed
    rows, out = _run(toy, tmp_path, "skip")
    error = next(r for r in rows if r["severity"] == "error")
    assert error["id"] == image_id and error["file"] == str(toy.mask_path(image_id, "val"))
    assert "mask size 40x64 differs from the image's 64x40" in error["problem"]
    assert "matches the image as viewers show it" in error["problem"]
    assert "EXIF orientation 8 (rotate 270 clockwise) ignored" in error["problem"]
    assert image_id not in DatasetIndex.load(out).ids("val")
