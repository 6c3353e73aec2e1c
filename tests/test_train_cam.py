"""train_cam on a tiny toy set: runs, DDP on gloo, guards (resume after a kill: test_kill_resume.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import pipeline_env, stage_argv, train_options
from stages import train_cam
from stages.data.classification import ClassificationDataset
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.data.transforms import AugmentConfig
from stages.io.checkpoint import load_checkpoint, save_checkpoint
from stages.models.cam_net import load_cam_net

VENV_BIN = Path(sys.executable).parent
TIMING_COLUMNS = ["img_per_s"]  # wall-clock throughput differs between any two runs


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=16, num_train=8, num_val=4,
                         min_size=48, max_size=72, seed=0)
    index.save(root / "index.json")
    return root / "index.json"


def cli_args(index: Path, out_dir: Path, **overrides) -> list[str]:
    """The stage's full command line for a tiny run; ``overrides`` use the flag names with _."""
    opts = {"split": "train_aug", "out": out_dir / "model.pt", "checkpoint": out_dir / "ckpt.pt",
            "metrics": out_dir / "metrics.csv", "backbone": "resnet18", "weights": "none",
            "pooling": "gap", **train_options(crop_size=64, batch_size=4, steps=6, checkpoint_every=2), **overrides}
    return ["--index", str(index)] + stage_argv(opts)


def test_dataset_items_are_multi_hot_and_reproducible(toy_index: Path) -> None:
    index = DatasetIndex.load(toy_index)
    ds = ClassificationDataset(index, "train_aug", AugmentConfig(crop_size=40), seed=3)
    item = ds[1]
    assert item["image"].shape == (3, 40, 40) and item["image"].dtype == torch.float32
    expected = torch.zeros(index.num_classes - 1)
    expected[[c - 1 for c in index.labels[ds.ids[1]]]] = 1
    assert torch.equal(item["labels"], expected)
    assert torch.equal(ds[1]["image"], item["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], item["image"])


def test_train_writes_model_and_metrics(toy_index: Path, tmp_path: Path) -> None:
    train_cam.main(cli_args(toy_index, tmp_path))
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["step"]) == list(range(1, 7))
    assert {"loss", "lr", "img_per_s"} <= set(metrics.columns)
    assert metrics["loss"].notna().all() and (metrics["loss"] > 0).all()
    net, meta = load_cam_net(tmp_path / "model.pt", "cpu")
    assert meta["backbone"] == "resnet18" and meta["num_classes"] == 3 and meta["classes"][0] == "background"
    assert meta["dataset"] == "toy" and meta["pooling"] == "gap" and meta["weights"] == "none"
    with torch.no_grad():
        assert net.cams(torch.randn(1, 3, 64, 64)).shape == (1, 3, 2, 2)

    state = load_checkpoint(tmp_path / "model.pt")
    state["meta"]["backbone"] = "resnet50"
    save_checkpoint(tmp_path / "foreign.pt", state)
    with pytest.raises(ValueError, match=r"foreign\.pt.*'resnet50'"):
        load_cam_net(tmp_path / "foreign.pt")


def test_checkpoint_of_other_backbone_is_not_resumed(toy_index: Path, tmp_path: Path, capsys) -> None:
    train_cam.main(cli_args(toy_index, tmp_path, steps=2))
    train_cam.main(cli_args(toy_index, tmp_path, steps=2, backbone="efficientnet_lite0"))
    assert "made with other settings; starting from step 0" in capsys.readouterr().err
    assert load_cam_net(tmp_path / "model.pt")[1]["backbone"] == "efficientnet_lite0"


def test_checkpoint_of_another_split_is_not_resumed(toy_index: Path, tmp_path: Path, capsys) -> None:
    """Same settings, other images (a smaller train_aug): train again, don't resume."""
    index = DatasetIndex.load(toy_index)
    index.splits["train_aug"] = index.splits["train_aug"][:12]
    index.save(tmp_path / "fewer.json")
    train_cam.main(cli_args(toy_index, tmp_path, steps=2))
    train_cam.main(cli_args(tmp_path / "fewer.json", tmp_path, steps=2))
    assert "made with other settings; starting from step 0" in capsys.readouterr().err
    assert load_cam_net(tmp_path / "model.pt")[1]["split_sha256"] == index.fingerprint("train_aug")


def test_nonfinite_loss_stops_without_model(toy_index: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"non-finite loss at step \d+"):
        train_cam.main(cli_args(toy_index, tmp_path, lr=1e30))
    assert not (tmp_path / "model.pt").exists()


def _final_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_torchrun_two_processes_gloo(toy_index: Path, tmp_path: Path) -> None:
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "stages.train_cam",
               *cli_args(toy_index, tmp_path, steps=3, batch_size=2)]
    done = subprocess.run(command, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    net, meta = load_cam_net(tmp_path / "model.pt")
    assert meta["train"]["world_size"] == 2
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["step"]) == [1, 2, 3]
