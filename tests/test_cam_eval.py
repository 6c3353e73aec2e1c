"""CAM inference on a tiny untrained network, and the background-threshold sweep checked by hand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stages import eval_cam, infer_cam
from stages.cams.multiscale import canvas_key, multiscale_cams
from stages.cams.threshold import labels_at_threshold, sweep_thresholds, threshold_grid
from stages.data.canvas import MIN_CANVAS_SIDE, grouped_batches, padded_size
from stages.data.index import DatasetIndex
from stages.io.cam_store import CamFileMeta, CamReader, CamWriter
from stages.io.checkpoint import file_sha256, save_checkpoint
from stages.io.label_png import write_label
from stages.models.cam_net import CAMNet

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "cat", "dog"]

# Hand-made case: image "a" (2x2, cat), image "b" (1x4, dog; its last pixel is void).
GT_A = np.array([[0, 1], [1, 1]], np.uint8)
CAM_A = np.array([[[0.1, 0.9], [0.6, 0.3]]], np.float32)
GT_B = np.array([[2, 2, 0, 255]], np.uint8)
CAM_B = np.array([[[0.7, 0.4, 0.35, 0.9]]], np.float32)
# mIoU by hand, rows = truth:
#  t=0.25: a -> [[0,1],[1,1]], b -> [2,2,2,-]; IoU bg 1/2, cat 3/3, dog 2/3
#  t=0.5:  a -> [[0,1],[1,0]], b -> [2,0,0,-]; IoU bg 2/4, cat 2/3, dog 1/2
#  t=0.8:  a -> [[0,1],[0,0]], b -> [0,0,0,-]; IoU bg 2/6, cat 1/3, dog 0/2
HAND_MIOU = {0.25: (1 / 2 + 1 + 2 / 3) / 3, 0.5: (2 / 4 + 2 / 3 + 1 / 2) / 3, 0.8: (1 / 3 + 1 / 3 + 0) / 3}


def test_threshold_grid_includes_stop():
    grid = threshold_grid(0.0, 0.6, 0.02)
    assert len(grid) == 31 and grid[0] == 0.0 and grid[-1] == 0.6
    with pytest.raises(ValueError):
        threshold_grid(0.5, 0.1, 0.02)


def test_sweep_matches_hand_computed_miou():
    samples = [(GT_A, CAM_A, np.array([1])), (GT_B, CAM_B, np.array([2]))]
    thresholds = np.array(sorted(HAND_MIOU))
    matrices = sweep_thresholds(iter(samples), thresholds, num_classes=3)
    for t, matrix in zip(thresholds, matrices):
        assert matrix.miou() == pytest.approx(HAND_MIOU[t])
    # the sweep agrees with the per-threshold label maps
    assert labels_at_threshold(CAM_A, np.array([1]), 0.5).tolist() == [[0, 1], [1, 0]]


def test_eval_cam_stage(tmp_path):
    root = tmp_path / "data"
    write_label(root / "SegmentationClass" / "a.png", GT_A)
    write_label(root / "SegmentationClass" / "b.png", GT_B)
    index = DatasetIndex(name="tiny", root=root, classes=CLASSES, splits={"train": ["a", "b"]},
                         labels={"a": [1], "b": [2]})
    index.save(tmp_path / "index.json")
    meta = CamFileMeta("tiny", "train", tuple(CLASSES), "resnet18", (1.0,), False, "abc")
    with CamWriter(tmp_path / "cams.h5", meta) as writer:
        writer.write("a", CAM_A, [1])
        writer.write("b", CAM_B, [2])
    out = {name: tmp_path / name for name in ("sweep.csv", "per_class.csv", "best.json")}
    eval_cam.main(["--index", str(tmp_path / "index.json"), "--cams", str(tmp_path / "cams.h5"),
                   "--split", "train", "--threshold-start", "0.25", "--threshold-stop", "0.8",
                   "--threshold-step", "0.275", "--out-sweep", str(out["sweep.csv"]),
                   "--out-per-class", str(out["per_class.csv"]), "--out-best", str(out["best.json"])])
    sweep = pd.read_csv(out["sweep.csv"])
    assert sweep["threshold"].tolist() == pytest.approx([0.25, 0.525, 0.8])
    # 0.525 gives the same maps as 0.5 here
    assert sweep["miou"].tolist() == pytest.approx([HAND_MIOU[0.25], HAND_MIOU[0.5], HAND_MIOU[0.8]], abs=1e-6)
    best = json.loads(out["best.json"].read_text())
    assert best["threshold"] == 0.25 and best["miou"] == pytest.approx(HAND_MIOU[0.25], abs=1e-6)
    per_class = pd.read_csv(out["per_class.csv"])
    assert per_class["class"].tolist() == CLASSES
    assert per_class["iou"].tolist() == pytest.approx([1 / 2, 1.0, 2 / 3], abs=1e-6)


# ---- infer_cam on a tiny untrained CAMNet --------------------------------------------------------

SIZES = {"i0": (64, 64), "i1": (48, 64), "i2": (64, 64), "i3": (48, 64), "i4": (64, 40)}
LABELS = {"i0": [1], "i1": [2], "i2": [1, 2], "i3": [1], "i4": [2]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(0)
    root = tmp / "data"
    (root / "JPEGImages").mkdir(parents=True)
    for image_id, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    index = DatasetIndex(name="tiny", root=root, classes=CLASSES, splits={"train": list(SIZES)}, labels=LABELS)
    index.save(tmp / "index.json")
    torch.manual_seed(0)
    net = CAMNet("resnet18", num_classes=2)
    meta = {"backbone": "resnet18", "weights": "none", "pooling": "gap", "num_classes": 2,
            "classes": CLASSES, "dataset": "tiny"}
    save_checkpoint(tmp / "model.pt", {"model": net.state_dict(), "meta": meta})
    return tmp / "index.json", tmp / "model.pt"


def infer_args(index_path: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--index", str(index_path), "--checkpoint", str(model), "--split", "train",
            "--scales", "1.0", "0.5", "1.5", "--flip", "--out", str(out), "--device", "cpu", *extra]


def read_all(path: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    with CamReader(path) as reader:
        return {i: (e.cams, e.class_indices.tolist()) for i, e in reader.entries()}


def test_infer_cam_writes_present_classes_at_image_size(tiny_model, tmp_path):
    index_path, model = tiny_model
    out = tmp_path / "cams.h5"
    infer_cam.main(infer_args(index_path, model, out, "--batch-size", "2"))
    with CamReader(out) as reader:
        assert reader.meta.scales == (1.0, 0.5, 1.5) and reader.meta.flip
        assert reader.meta.checkpoint_sha256 == file_sha256(model)
        assert reader.meta.classes == tuple(CLASSES) and reader.meta.dataset == "tiny"
    cams = read_all(out)
    assert cams.keys() == SIZES.keys()
    for image_id, (maps, classes) in cams.items():
        assert classes == LABELS[image_id]
        assert maps.shape == (len(classes),) + SIZES[image_id]
        assert maps.min() >= 0 and maps.max() <= 1.0
        peaks = maps.reshape(len(classes), -1).max(1)
        assert np.all((peaks == 0) | (np.abs(peaks - 1) < 1e-3))  # each map max-normalised
    # batching groups equal sizes only, so results do not depend on the batch size
    single = tmp_path / "single.h5"
    infer_cam.main(infer_args(index_path, model, single, "--batch-size", "1"))
    for image_id, (maps, _) in read_all(single).items():
        np.testing.assert_allclose(maps, cams[image_id][0], atol=2e-3)


def test_checkpoint_for_another_data_set_is_refused(tiny_model, tmp_path):
    index_path, model = tiny_model
    state = torch.load(model, weights_only=True)
    state["meta"]["dataset"] = "voc"
    other = tmp_path / "other.pt"
    save_checkpoint(other, state)
    with pytest.raises(ValueError, match=f"{other}.*dataset"):
        infer_cam.main(infer_args(index_path, other, tmp_path / "cams.h5"))
    assert not (tmp_path / "cams.h5").exists()


def test_two_process_run_merges_shards(tiny_model, tmp_path):
    index_path, model = tiny_model
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    infer_cam.main(infer_args(index_path, model, one))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stages.infer_cam",
                           *infer_args(index_path, model, two)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]  # shards removed
    merged, reference = read_all(two), read_all(one)
    assert merged.keys() == reference.keys()
    for image_id, (maps, classes) in merged.items():
        assert classes == reference[image_id][1]
        # maps are stored in steps of 1/255; one process per core sums in another order than two
        # threads, so a value on a step's edge may land one step over (seen once in CI)
        np.testing.assert_allclose(maps, reference[image_id][0], atol=1 / 255 + 1e-6)


def test_grouped_batches_bound_pending_images():
    items = [(f"x{i}", torch.zeros(3, 4 + i % 3, 5)) for i in range(10)]
    batches = list(grouped_batches(iter(items), batch_size=3, key=lambda t: t.shape, max_pending=4))
    assert sorted(i for ids, _ in batches for i in ids) == sorted(i for i, _ in items)
    for ids, images in batches:
        assert len(ids) == len(images) <= 3 and len({t.shape for t in images}) == 1


def test_no_canvas_side_is_below_the_minimum():
    """A side of 32 px or less (a one-column layer4 map) gave bf16 outputs that varied by process."""
    assert MIN_CANVAS_SIDE == 48
    assert padded_size((70, 20), 16) == (80, 48)
    assert padded_size((33, 30), 1) == (48, 48)
    assert padded_size((49, 100), 16) == (64, 112)


def test_images_of_different_sizes_share_a_pass_and_keep_their_own_cams():
    """Padded to a common canvas, each image's CAMs are those it gets alone, at its own size."""
    torch.manual_seed(0)
    net = CAMNet("resnet18", num_classes=3, weights="none").eval()
    a, b = torch.randn(3, 70, 90), torch.randn(3, 66, 84)
    assert canvas_key(a, (1.0, 0.5), 16) == canvas_key(b, (1.0, 0.5), 16) == ((80, 96), (48, 48))
    with torch.inference_mode():
        together = multiscale_cams(net, [a, b], (1.0, 0.5), flip=True, size_divisor=16)
        alone = [multiscale_cams(net, [t], (1.0, 0.5), flip=True, size_divisor=16)[0] for t in (a, b)]
    assert [t.shape for t in together] == [(3, 70, 90), (3, 66, 84)]
    for x, y in zip(together, alone):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_keeping_the_present_classes_gives_their_rows_of_all_classes():
    """``keep`` picks channels before the upsampling; the maps are those of the full set, and an
    image without classes gets an empty (0, h, w) map."""
    torch.manual_seed(0)
    net = CAMNet("resnet18", num_classes=4, weights="none").eval()
    a, b = torch.randn(3, 70, 90), torch.randn(3, 66, 84)
    keep = [torch.tensor([2, 0]), torch.tensor([], dtype=torch.int64)]
    with torch.inference_mode():
        every = multiscale_cams(net, [a, b], (1.0, 0.5), flip=True, size_divisor=16)
        kept = multiscale_cams(net, [a, b], (1.0, 0.5), flip=True, size_divisor=16, keep=keep)
    torch.testing.assert_close(kept[0], every[0][keep[0]], atol=1e-4, rtol=1e-4)
    assert kept[1].shape == (0, 66, 84)
