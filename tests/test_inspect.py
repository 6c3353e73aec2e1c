"""stages.inspect: listing an HDF5 file and rendering inspection panels."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_cams import damaged_copies, make_hostile
from PIL import Image

from stages import inspect as inspect_stage
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.cam_store import CamFileMeta, CamWriter
from stages.io.label_png import write_label

CLASSES = ["background", "cat", "dog"]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "JPEGImages" / "im1.jpg")
    mask = np.zeros((24, 32), np.uint8)
    mask[5:15, 8:20] = 2
    write_label(root / "SegmentationClass" / "im1.png", mask)
    write_label(tmp_path / "labels" / "im1.png", mask)
    index = DatasetIndex(name="tiny", root=root, classes=CLASSES, splits={"train": ["im1"]},
                         labels={"im1": [1, 2]})
    index.save(tmp_path / "index.json")
    meta = CamFileMeta("tiny", "train", tuple(CLASSES), "resnet18", (1.0, 0.5), True, "feedbeef")
    with CamWriter(tmp_path / "cams.h5", meta) as writer:
        writer.write("im1", rng.random((2, 24, 32)), [1, 2])
    return {"index": tmp_path / "index.json", "cams": tmp_path / "cams.h5", "labels": tmp_path / "labels"}


def test_list_shows_attributes_and_entries(files, capsys):
    inspect_stage.main([str(files["cams"])])
    text = capsys.readouterr().out
    for expected in ("@dataset = tiny", "@classes = [background, cat, dog]", "@checkpoint_sha256 = feedbeef",
                     "@num_images = 1", "cams/  (1 entries)", "im1  uint8 (2, 24, 32)",
                     "class_indices=[1, 2]"):
        assert expected in text


def test_panel_is_rendered(files, tmp_path):
    out_dir = tmp_path / "panels"
    inspect_stage.main(["--index", str(files["index"]), "--cams", str(files["cams"]),
                        "--labels", str(files["labels"]), "--ids", "im1", "--out-dir", str(out_dir)])
    assert [p.name for p in out_dir.iterdir()] == ["im1.png"]
    with Image.open(out_dir / "im1.png") as im:
        # image, two CAMs (+ colour bar), pseudo label, ground truth (+ legend), side by side
        assert im.width > 4 * im.height


def test_class_legend_names_the_classes_shown():
    pseudo = np.array([[0, 1], [255, 1]], np.uint8)
    mask = np.array([[0, 2], [2, 2]], np.uint8)
    handles = inspect_stage.class_legend(CLASSES, [pseudo, mask])
    assert [h.get_label() for h in handles] == ["0 background", "1 cat", "2 dog", "255 ignored"]
    assert tuple(handles[0].get_facecolor()[:3]) == (0.0, 0.0, 0.0)  # VOC palette: background black


def test_errors_name_the_file_or_id(files, tmp_path):
    with pytest.raises(KeyError, match="nope"):
        inspect_stage.main(["--index", str(files["index"]), "--cams", str(files["cams"]),
                            "--ids", "nope", "--out-dir", str(tmp_path / "p")])
    broken = tmp_path / "broken.h5"
    broken.write_bytes(files["cams"].read_bytes()[:500])
    with pytest.raises(ValueError, match=str(broken)):
        inspect_stage.main([str(broken)])
    with pytest.raises(SystemExit):
        inspect_stage.main(["--ids", "im1"])


def test_listing_shows_a_link_unfollowed_then_refuses_the_entry(files, tmp_path, capsys):
    cams, other = files["cams"], tmp_path / "other.h5"
    shutil.copy(cams, other)
    make_hostile(cams, "im1", "external_link", other)
    with pytest.raises(InputError, match=f"^{cams}: CAM entry 'im1' is an external link to '/cams/im1' in '{other}'"):
        inspect_stage.main([str(cams)])
    text = capsys.readouterr().out
    assert f"im1  -> external link to '/cams/im1' in '{other}' (not followed)" in text
    assert "uint8" not in text  # the other file's array is not listed as if it were this file's


def test_listing_an_hdf5_file_with_a_group_cycle(tmp_path, capsys):
    """Hard links can make a group its own member; the listing enters it once. Not a CAM file: no check."""
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("a")
        group["again"] = group
        group["x"] = np.zeros(3)
    inspect_stage.main([str(path)])
    text = capsys.readouterr().out
    assert "again/  (2 entries)" in text and "not listed (listed above" in text and "x  float64 (3,)" in text


def test_damaged_metadata_is_reported_as_bad_input(files, tmp_path):
    """A metadata block made unreadable: the listing names the file as damaged, never a traceback."""
    for path in damaged_copies(files["cams"], tmp_path):
        with pytest.raises(InputError, match=f"^{path}: damaged HDF5 file, cannot be listed"):
            inspect_stage.main([str(path)])
