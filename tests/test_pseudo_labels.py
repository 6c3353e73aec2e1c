"""Pseudo labels end to end on two tiny images with hand-made CAMs, and their evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import eval_pseudo, pseudo_labels
from stages.data.index import DatasetIndex
from stages.io.cam_store import CamFileMeta, CamReader, CamWriter
from stages.io.label_png import read_label, write_label
from stages.labels.crf import CRFParams
from stages.labels.pseudo import PseudoLabelSettings, pseudo_label

CLASSES = ["background", "cat", "dog", "person"]
CRF = CRFParams(10, 3, 3, 80, 13, 10)

# p1: one class (person); values chosen away from 0.2 / 0.3 / 0.4 so no pixel ties a threshold
P1_CAM = np.array([[0.05, 0.25, 0.35, 0.5, 0.95]] * 2 + [[0.95, 0.5, 0.35, 0.25, 0.05]] * 2, np.float32)
# p2: two classes (cat, dog)
P2_CAT = np.array([[0.5, 0.45, 0.1], [0.9, 0.05, 0.3], [0.1, 0.1, 0.8]], np.float32)
P2_DOG = np.array([[0.9, 0.1, 0.15], [0.2, 0.1, 0.35], [0.6, 0.25, 0.1]], np.float32)


def expected_plain(cams: np.ndarray, classes: list[int], threshold: float) -> np.ndarray:
    """The rule written out: strongest class if its score beats the background score, else 0."""
    label = np.zeros(cams.shape[1:], dtype=np.uint8)
    best = cams.max(0)
    strongest = np.array(classes)[cams.argmax(0)]
    label[best > threshold] = strongest[best > threshold]
    return label


def expected_banded(cams, classes, threshold, band) -> np.ndarray:
    low, high = expected_plain(cams, classes, threshold - band), expected_plain(cams, classes, threshold + band)
    return np.where(low == high, low, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    """Index JSON, CAM file and GT masks for p1 (4x5) and p2 (3x3)."""
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    cams = {"p1": (P1_CAM[None], [3]), "p2": (np.stack([P2_CAT, P2_DOG]), [1, 2])}
    rng = np.random.default_rng(0)
    for image_id, (cam, classes) in cams.items():
        pixels = rng.integers(0, 255, cam.shape[1:] + (3,), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg")
    # ground truth: p1 is a person where the CAM is >= 0.35, p2 is what the plain rule gives at 0.3
    write_label(root / "SegmentationClass" / "p1.png", np.where(P1_CAM >= 0.35, 3, 0).astype(np.uint8))
    write_label(root / "SegmentationClass" / "p2.png", expected_plain(*cams["p2"], 0.3))
    index = DatasetIndex(name="tiny", root=root, classes=CLASSES, splits={"train": ["p1", "p2"]},
                         labels={"p1": [3], "p2": [1, 2]})
    index_path = tmp_path / "index.json"
    index.save(index_path)
    cam_path = tmp_path / "cams.h5"
    meta = CamFileMeta("tiny", "train", tuple(CLASSES), "resnet18", (1.0,), True, "abc")
    with CamWriter(cam_path, meta) as writer:
        for image_id, (cam, classes) in cams.items():
            writer.write(image_id, cam, classes)
    return index_path, cam_path


def stage_args(index_path, cam_path, out_dir, *extra: str) -> list[str]:
    return ["--index", str(index_path), "--cams", str(cam_path), "--split", "train",
            "--iterations", "5", "--gaussian-sxy", "3", "--gaussian-compat", "3",
            "--bilateral-sxy", "80", "--bilateral-srgb", "13", "--bilateral-compat", "10",
            "--out-dir", str(out_dir), *extra]


def test_ignore_band_marks_the_uncertain_pixels(dataset):
    _, cam_path = dataset
    with CamReader(cam_path) as reader:
        p1, p2 = reader.read("p1"), reader.read("p2")
    banded = pseudo_label(None, p1, PseudoLabelSettings(0.3, 0.1, None, 4))
    assert banded.tolist() == [[0, 255, 255, 3, 3]] * 2 + [[3, 3, 255, 255, 0]] * 2
    plain = pseudo_label(None, p1, PseudoLabelSettings(0.3, 0.0, None, 4))
    assert plain.tolist() == [[0, 0, 3, 3, 3]] * 2 + [[3, 3, 3, 0, 0]] * 2
    np.testing.assert_array_equal(pseudo_label(None, p2, PseudoLabelSettings(0.3, 0.1, None, 4)),
                                  expected_banded(p2.cams, [1, 2], 0.3, 0.1))


def test_stage_without_crf_then_eval(dataset, tmp_path):
    index_path, cam_path = dataset
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"threshold": 0.3, "miou": 0.5}))
    out = tmp_path / "labels"
    pseudo_labels.main(stage_args(index_path, cam_path, out, "--threshold", "auto", "--best", str(best),
                                  "--ignore-band", "0.1", "--no-use-crf"))
    assert sorted(p.name for p in out.iterdir()) == ["p1.png", "p2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data", "index.json", "cams.h5", "best.json", "labels"])  # no temp directory left
    p1 = read_label(out / "p1.png")
    assert p1.tolist() == [[0, 255, 255, 3, 3]] * 2 + [[3, 3, 255, 255, 0]] * 2

    summary, per_class = tmp_path / "summary.csv", tmp_path / "per_class.csv"
    eval_pseudo.main(["--index", str(index_path), "--labels", str(out), "--split", "train",
                      "--out-summary", str(summary), "--out-per-class", str(per_class)])
    frame = pd.read_csv(summary)
    assert list(frame.columns) == ["miou", "miou_labelled", "precision", "coverage", "fg_ratio", "false_fg",
                                   "missed_fg", "wrong_class", "n_images"]
    row = frame.iloc[0]
    p2_banded = expected_banded(np.stack([P2_CAT, P2_DOG]), [1, 2], 0.3, 0.1)
    p2_ignored = int(np.sum(p2_banded == 255))
    assert row.n_images == 2
    # every labelled pixel agrees with the mask by construction; the band removes 8 + p2_ignored
    assert row.precision == pytest.approx(1.0) and row.miou_labelled == pytest.approx(1.0)
    assert row.coverage == pytest.approx((20 + 9 - 8 - p2_ignored) / 29, abs=1e-6)
    # the field's mIoU: the ignored pixels are background, so the abstentions on objects count
    gt = np.concatenate([read_label(tmp_path / "data" / "SegmentationClass" / f"{i}.png").ravel()
                         for i in ("p1", "p2")])
    pred = np.concatenate([p1.ravel(), p2_banded.ravel()])
    pred[pred == 255] = 0
    ious = [np.sum((gt == c) & (pred == c)) / np.sum((gt == c) | (pred == c)) for c in range(len(CLASSES))]
    assert row.miou == pytest.approx(np.mean(ious), abs=1e-6) and row.miou < row.miou_labelled
    table = pd.read_csv(per_class)
    assert list(table.columns) == ["class", "iou", "iou_labelled"] and list(table["class"]) == CLASSES
    assert table["iou"].tolist() == pytest.approx(ious, abs=1e-6)
    assert table["iou_labelled"].tolist() == pytest.approx([1.0] * 4)


def test_stage_with_crf_is_the_same_with_two_workers(dataset, tmp_path):
    index_path, cam_path = dataset
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"labels{workers}"
        pseudo_labels.main(stage_args(index_path, cam_path, out, "--threshold", "0.3",
                                      "--ignore-band", "0.1", "--use-crf", "--workers", workers))
        outputs.append({p.stem: read_label(p) for p in sorted(out.iterdir())})
    assert outputs[0].keys() == {"p1", "p2"}
    for image_id, label in outputs[0].items():
        np.testing.assert_array_equal(label, outputs[1][image_id])
    assert set(np.unique(outputs[0]["p1"])) <= {0, 3, 255}
    assert set(np.unique(outputs[0]["p2"])) <= {0, 1, 2, 255}


def test_rerun_replaces_the_directory(dataset, tmp_path):
    index_path, cam_path = dataset
    out = tmp_path / "labels"
    out.mkdir()
    (out / "stale.png").write_bytes(b"half written")
    pseudo_labels.main(stage_args(index_path, cam_path, out, "--threshold", "0.3",
                                  "--ignore-band", "0", "--no-use-crf"))
    assert sorted(p.name for p in out.iterdir()) == ["p1.png", "p2.png"]


def test_missing_image_fails_without_output(dataset, tmp_path):
    index_path, cam_path = dataset
    index = DatasetIndex.load(index_path)
    index.splits["train"].append("p3")
    index.labels["p3"] = [1]
    index.save(index_path)
    out = tmp_path / "labels"
    with pytest.raises(KeyError, match=f"{cam_path}.*p3"):
        pseudo_labels.main(stage_args(index_path, cam_path, out, "--threshold", "0.3",
                                      "--ignore-band", "0", "--no-use-crf"))
    assert not out.exists() and not any(p.name.startswith(".labels") for p in tmp_path.iterdir())


def test_auto_threshold_needs_best(dataset, tmp_path):
    index_path, cam_path = dataset
    with pytest.raises(ValueError, match="--best"):
        pseudo_labels.main(stage_args(index_path, cam_path, tmp_path / "l", "--threshold", "auto",
                                      "--ignore-band", "0", "--no-use-crf"))


def test_eval_pseudo_names_missing_labels(dataset, tmp_path):
    index_path, _ = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty}.*p1"):
        eval_pseudo.main(["--index", str(index_path), "--labels", str(empty), "--split", "train",
                          "--out-summary", str(tmp_path / "s.csv"), "--out-per-class", str(tmp_path / "c.csv")])


def test_image_of_another_size_is_an_error_naming_it(dataset, tmp_path):
    index_path, cam_path = dataset
    image = DatasetIndex.load(index_path).image_path("p1")
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(image)
    with pytest.raises(ValueError, match=f"{cam_path}.*'p1'.*{image}"):
        pseudo_labels.main(stage_args(index_path, cam_path, tmp_path / "labels", "--threshold", "0.3",
                                      "--ignore-band", "0", "--use-crf"))
    assert not (tmp_path / "labels").exists()
