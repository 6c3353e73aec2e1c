"""train_seg with the ``ce`` method on a tiny toy set whose pseudo labels are its GT masks."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import pipeline_env, sigkill_when, stage_argv, toy_with_gt_labels, train_options
from stages import train_seg
from stages.data.index import DatasetIndex
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.transforms import AugmentConfig, color_jitter_image
from stages.io.checkpoint import load_checkpoint, save_checkpoint
from stages.io.label_png import IGNORE, read_label, write_label
from stages.methods.registry import load_trained_model
from stages.models.cam_net import CAMNet

TIMING_COLUMNS = ["img_per_s"]  # wall-clock throughput differs between any two runs


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    """(index.json, pseudo-label folder) where the pseudo labels are copies of the GT masks."""
    return toy_with_gt_labels(tmp_path_factory.mktemp("toy"))


def cli_args(index: Path, labels: Path | None, out_dir: Path, **overrides) -> list[str]:
    """The stage's full command line for a tiny run; ``overrides`` use the flag names with _."""
    opts = {"split": "train_aug", "method": "ce", "pseudo_labels": labels, "backbone": "resnet18",
            "weights": "none", "decoder": "mlp", "out": out_dir / "model.pt", "checkpoint": out_dir / "ckpt.pt",
            "metrics": out_dir / "metrics.csv",
            **train_options(crop_size=48, scale_range=[0.8, 1.2], color_jitter=0.2, batch_size=4, steps=4,
                            checkpoint_every=2), **overrides}
    return ["--index", str(index)] + stage_argv(opts)


def test_dataset_crops_and_labels(toy) -> None:
    index_path, labels = toy
    index = DatasetIndex.load(index_path)
    ids = index.ids("train_aug")
    ds = SegmentationDataset(index, "train_aug", label_dir_source(labels, ids), AugmentConfig(crop_size=40), seed=1)
    item = ds[2]
    assert item["image"].shape == (3, 40, 40) and item["label"].shape == (40, 40)
    assert item["label"].dtype == torch.int64
    values = set(item["label"].unique().tolist())
    assert values <= set(range(index.num_classes)) | {IGNORE}
    assert torch.equal(ds[2]["label"], item["label"])  # same epoch, same crop
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["image"], item["image"])


def test_colour_jitter_is_brightness_contrast_saturation_in_turn() -> None:
    """The one affine map gives what the three adjustments give applied one after the other."""
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for seed in range(20):
        b, c, s = 1.0 + np.random.default_rng(seed).uniform(-0.3, 0.3, size=3)
        img = image.astype(np.float64) * b
        img = (img - img.mean()) * c + img.mean()
        grey = img.mean(axis=2, keepdims=True)
        expected = np.clip((img - grey) * s + grey, 0, 255)
        jittered = color_jitter_image(image, 0.3, np.random.default_rng(seed))
        assert np.abs(jittered - expected).max() <= 1.0  # uint8 truncation of float32 against float64


def test_missing_pseudo_labels_named(toy, tmp_path: Path) -> None:
    index_path, labels = toy
    partial = tmp_path / "partial"
    shutil.copytree(labels, partial)
    ids = sorted(p.stem for p in partial.glob("*.png"))
    for image_id in ids[:2]:
        (partial / f"{image_id}.png").unlink()
    with pytest.raises(ValueError, match=rf"partial: 2 of 12 .*{ids[0]}, {ids[1]}"):
        train_seg.main(cli_args(index_path, partial, tmp_path))
    with pytest.raises(ValueError, match="needs --pseudo-labels"):
        train_seg.main(cli_args(index_path, None, tmp_path))
    assert not (tmp_path / "model.pt").exists()


def test_trains_writes_model_metrics_and_inits_from_cam(toy, tmp_path: Path) -> None:
    index_path, labels = toy
    cam = CAMNet("resnet18", num_classes=3)
    cam_meta = {"backbone": "resnet18", "weights": "none", "pooling": "gap", "num_classes": 3,
                "classes": DatasetIndex.load(index_path).classes, "dataset": "toy"}
    save_checkpoint(tmp_path / "cam.pt", {"model": cam.state_dict(), "meta": cam_meta})
    # lr 0: the copied backbone must come out of training untouched (BN running stats aside)
    train_seg.main(cli_args(index_path, labels, tmp_path, init_from_cam=tmp_path / "cam.pt", lr=0.0,
                            decoder="aspp", decoder_width=32))
    model, meta = load_trained_model(tmp_path / "model.pt", "cpu")
    assert meta["method"] == "ce" and meta["decoder"] == "aspp" and meta["init"]["from"] == "cam"
    assert meta["decoder_width"] == 32 and model.decoder.classifier.in_channels == 32
    cam_state = cam.backbone.state_dict()
    for name, value in model.backbone.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, cam_state[name]), name
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["step"]) == [1, 2, 3, 4]
    assert {"loss", "lr", "img_per_s"} <= set(metrics.columns) and (metrics["loss"] > 0).all()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 61)).shape == (1, 4, 50, 61)

    other_meta = dict(cam_meta, backbone="efficientnet_lite0")
    save_checkpoint(tmp_path / "other_cam.pt", {"model": CAMNet("efficientnet_lite0", 3).state_dict(),
                                                "meta": other_meta})
    with pytest.raises(ValueError, match=r"other_cam\.pt.*must match"):
        train_seg.main(cli_args(index_path, labels, tmp_path / "other", init_from_cam=tmp_path / "other_cam.pt"))


def test_a_finished_checkpoint_on_other_labels_is_not_resumed(toy, tmp_path: Path, capsys) -> None:
    """The workflow reruns train_seg when its pseudo labels change; the checkpoint of the run on the
    old labels must then train again, not come back as the new model."""
    index_path, labels = toy
    changed = tmp_path / "changed"
    shutil.copytree(labels, changed)
    first = sorted(changed.glob("*.png"))[0]
    write_label(first, np.zeros_like(read_label(first)))
    out = tmp_path / "run"
    train_seg.main(cli_args(index_path, labels, out))
    old = load_checkpoint(out / "model.pt")["meta"]["inputs"]
    train_seg.main(cli_args(index_path, labels, out))
    assert "resuming from" in capsys.readouterr().err  # the same inputs: resumed, nothing to do
    train_seg.main(cli_args(index_path, changed, out))
    assert "was made with other settings; starting from step 0" in capsys.readouterr().err
    new = load_checkpoint(out / "model.pt")["meta"]["inputs"]
    assert new["pseudo_labels"] != old["pseudo_labels"] and new["split"] == old["split"]


def test_resume_after_sigkill_matches_uninterrupted(toy, tmp_path: Path) -> None:
    index_path, labels = toy
    steps = {"steps": 10, "checkpoint_every": 3, "lr": 0.02}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train_seg.main(cli_args(index_path, labels, whole, **steps))
    loss = pd.read_csv(whole / "metrics.csv")["loss"]
    assert loss.iloc[-3:].mean() < loss.iloc[:3].mean(), "ce does not learn the masks it is given"

    command = [sys.executable, "-m", "stages.train_seg", *cli_args(index_path, labels, killed, **steps)]
    killed.mkdir()
    sigkill_when(command, killed / "ckpt.pt", killed / "first.log", timeout=120)
    assert not (killed / "model.pt").exists(), "run finished before it could be killed"
    assert load_checkpoint(killed / "ckpt.pt")["step"] < steps["steps"]

    done = subprocess.run(command, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    a, b = load_checkpoint(whole / "model.pt")["model"], load_checkpoint(killed / "model.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(whole / "metrics.csv").drop(columns=TIMING_COLUMNS),
                                  pd.read_csv(killed / "metrics.csv").drop(columns=TIMING_COLUMNS))


def test_torchrun_two_processes_gloo(toy, tmp_path: Path) -> None:
    index_path, labels = toy
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stages.train_seg",
               *cli_args(index_path, labels, tmp_path, steps=2, batch_size=2)]
    done = subprocess.run(command, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, meta = load_trained_model(tmp_path / "model.pt", "cpu")
    assert meta["train"]["world_size"] == 2
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [1, 2]


def test_cold_start_from_another_segmenter(toy, tmp_path: Path) -> None:
    """--init-from-model starts the whole model from a trained segmenter (lr 0 keeps it), and a
    file of another architecture is refused naming it."""
    index_path, labels = toy
    train_seg.main(cli_args(index_path, labels, tmp_path / "first", steps=2))
    train_seg.main(cli_args(index_path, labels, tmp_path / "warm", steps=2, lr=0.0,
                            init_from_model=tmp_path / "first" / "model.pt"))
    first = load_checkpoint(tmp_path / "first" / "model.pt")["model"]
    warm = load_checkpoint(tmp_path / "warm" / "model.pt")
    assert warm["meta"]["init"]["from"] == "model"
    for name, value in warm["model"].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, first[name]), name
    with pytest.raises(ValueError, match=r"first/model\.pt: a resnet18/mlp \(width 256\) ce model does not fit"):
        train_seg.main(cli_args(index_path, labels, tmp_path / "other", decoder="aspp",
                                init_from_model=tmp_path / "first" / "model.pt"))
