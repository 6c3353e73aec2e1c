"""The refine stage (PL-Mix) on a few toy images: rounds end to end, resume, DDP on gloo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import stages.cams.multiscale
import stages.plmix.passes
from conftest import pipeline_env, sigkill_when, stage_argv, train_options
from stages import infer_cam, refine, train_cam
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.io.cam_store import CamReader
from stages.io.checkpoint import file_sha256, load_checkpoint
from stages.io.label_png import read_label
from stages.models.cam_net import load_cam_net
from stages.runtime.distributed import DistContext
from stages.runtime.rounds import RoundStore

VENV_BIN = Path(sys.executable).parent
TIMING_COLUMNS = ["img_per_s"]


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory) -> Path:
    """A toy set, a briefly trained CAM network and a best-threshold file, in one folder."""
    root = tmp_path_factory.mktemp("plmix")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=12, num_train=6, num_val=2,
                         min_size=48, max_size=72, seed=0)
    index.save(root / "index.json")
    train_cam.main(["--index", str(root / "index.json"), "--split", "train_aug", "--out", str(root / "model.pt"),
                    "--checkpoint", str(root / "ckpt.pt"), "--metrics", str(root / "metrics.csv"),
                    "--backbone", "resnet18", "--weights", "none", "--pooling", "gap",
                    *stage_argv(train_options(crop_size=64, batch_size=4, steps=4, checkpoint_every=4))])
    (root / "best.json").write_text(json.dumps({"threshold": 0.3, "miou": 0.25}))
    return root


def cli_args(run: Path, out_dir: Path, **overrides) -> list[str]:
    """The stage's full command line for a tiny run; ``overrides`` use the flag names with _."""
    opts = {"index": run / "index.json", "split": "train_aug", "eval_split": "train",
            "checkpoint": run / "model.pt", "best": run / "best.json", "out": out_dir / "refined.pt",
            "out_cams": out_dir / "refined_cams.h5",
            "rounds_csv": out_dir / "rounds.csv", "state_dir": out_dir / "state", "rounds": 2,
            "paste_transform_from_round": 2, "paste_scale_range": [0.5, 2.0],
            "paste_max_rotation": 30, "focal_weight": 1.0, "iou_weight": 0.5, "dice_weight": 0.5,
            "continuity_weight": 0.1, "focal_gamma": 2.0, "temperature": 0.1, "scales": [1.0],
            "threshold_start": 0.0, "threshold_stop": 0.6, "threshold_step": 0.1, "iterations": 1,
            "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 80, "bilateral_srgb": 13, "bilateral_compat": 10,
            **train_options(crop_size=64, batch_size=4, steps=2, lr=0.001, checkpoint_every=1), **overrides}
    return ["--no-flip"] + stage_argv(opts)


@pytest.fixture(scope="module")
def refined(cam_run: Path, tmp_path_factory) -> Path:
    """An uninterrupted two-round refinement."""
    out = tmp_path_factory.mktemp("refined")
    refine.main(cli_args(cam_run, out))
    return out


def _network_passes(monkeypatch) -> list[list[str]]:
    """The ids of every pass of a network over images that a refinement makes, in order."""
    passes: list[list[str]] = []
    for module in (stages.cams.multiscale, stages.plmix.passes):
        original = module.write_cams
        monkeypatch.setattr(module, "write_cams", lambda *a, _o=original, **k: passes.append(list(a[2])) or _o(*a, **k))
    return passes


def _entries(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with CamReader(path) as reader:
        return {i: (e.cams, e.class_indices) for i, e in reader.entries()}


def test_rounds_give_a_cam_network_for_infer_cam(cam_run: Path, refined: Path, tmp_path: Path) -> None:
    index = DatasetIndex.load(cam_run / "index.json")
    net, meta = load_cam_net(refined / "refined.pt")
    rounds = pd.read_csv(refined / "rounds.csv")
    assert list(rounds["round"]) == [0, 1, 2]
    assert rounds["eval_threshold"][0] == 0.3 and rounds["eval_miou"][0] == 0.25  # row 0: eval_cam's
    assert list(rounds["label_threshold"][1:]) == list(rounds["eval_threshold"][:2])  # camT follows the sweep
    assert list(rounds["paste_transform"][1:]) == [False, True]
    assert rounds[["loss", "focal", "soft_iou", "soft_dice", "continuity"]][1:].notna().all().all()
    assert meta["refinement"] == {"method": "plmix", "rounds": 2,
                                  "from_checkpoint_sha256": file_sha256(cam_run / "model.pt"),
                                  "final_threshold": rounds["eval_threshold"].iloc[-1]}
    assert meta["backbone"] == "resnet18" and meta["classes"] == index.classes

    state = refined / "state"
    for r in (1, 2):
        labels = sorted((state / f"round{r}" / "labels").glob("*.png"))
        assert [p.stem for p in labels] == sorted(index.ids("train_aug"))
        for path in labels[:4]:
            assert set(np.unique(read_label(path))) <= {0, *index.labels[path.stem]}
        assert not (state / f"round{r}" / "train.pt").exists()
        assert list(pd.read_csv(state / f"round{r}" / "train_metrics.csv")["step"]) == [1, 2]
    assert file_sha256(refined / "refined.pt") == file_sha256(state / "round2" / "model.pt")
    assert not (state / "round1" / "cams.h5").exists()  # served round 2's labels, then deleted

    # the CAM file written with the network is the one infer_cam makes of it
    inferred = tmp_path / "inferred.h5"
    infer_cam.main(["--index", str(cam_run / "index.json"), "--checkpoint", str(refined / "refined.pt"),
                    "--split", "train_aug", "--scales", "1.0", "--no-flip", "--out", str(inferred), "--device", "cpu"])
    with CamReader(refined / "refined_cams.h5") as ours, CamReader(inferred) as theirs:
        assert ours.meta == theirs.meta
        assert ours.meta.checkpoint_sha256 == file_sha256(refined / "refined.pt")
        assert json.loads(ours.meta.refinement) == meta["refinement"]
    ours, theirs = _entries(refined / "refined_cams.h5"), _entries(inferred)
    assert sorted(ours) == sorted(index.ids("train_aug"))
    for image_id, (cams, classes) in theirs.items():
        np.testing.assert_array_equal(ours[image_id][1], classes)
        np.testing.assert_allclose(ours[image_id][0], cams, atol=1 / 255 + 1e-6)

    cams = tmp_path / "cams.h5"
    infer_cam.main(["--index", str(cam_run / "index.json"), "--checkpoint", str(refined / "refined.pt"),
                    "--split", "train", "--scales", "1.0", "--flip", "--out", str(cams), "--device", "cpu"])
    with CamReader(cams) as reader:
        assert sorted(reader.ids()) == sorted(index.ids("train"))
        assert reader.meta.checkpoint_sha256 == file_sha256(refined / "refined.pt")


def test_round_one_labels_come_from_the_input_networks_cam_file(cam_run: Path, refined: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """With infer_cam's file of the input network, round 1 skips its pass over the split and
    labels as the pass would (the file's 8-bit CAMs move a few boundary pixels at most)."""
    cams = tmp_path / "cams.h5"
    infer_cam.main(["--index", str(cam_run / "index.json"), "--checkpoint", str(cam_run / "model.pt"),
                    "--split", "train_aug", "--scales", "1.0", "--no-flip", "--out", str(cams), "--device", "cpu"])
    passes = _network_passes(monkeypatch)
    refine.main(cli_args(cam_run, tmp_path / "from_file", rounds=1, cams=cams))
    index = DatasetIndex.load(cam_run / "index.json")
    assert passes == [index.ids("train_aug")]  # the trained network's pass only: the sweep reads its file
    agree = total = 0
    for path in sorted((refined / "state" / "round1" / "labels").glob("*.png")):
        ours = read_label(tmp_path / "from_file" / "state" / "round1" / "labels" / path.name)
        agree, total = agree + int((ours == read_label(path)).sum()), total + ours.size
    assert agree / total > 0.99

    flipped = tmp_path / "flipped.h5"
    infer_cam.main(["--index", str(cam_run / "index.json"), "--checkpoint", str(cam_run / "model.pt"),
                    "--split", "train_aug", "--scales", "1.0", "--flip", "--out", str(flipped), "--device", "cpu"])
    with pytest.raises(ValueError, match=r"flipped\.h5: CAMs made with flip True, not this refinement's False"):
        refine.main(cli_args(cam_run, tmp_path / "bad", rounds=1, cams=flipped))


def test_more_rounds_continue_and_fewer_take_an_earlier_round(cam_run: Path, refined: Path, capsys,
                                                               monkeypatch) -> None:
    index = DatasetIndex.load(cam_run / "index.json")
    passes = _network_passes(monkeypatch)
    fewer = cli_args(cam_run, refined, rounds=1, out=refined / "one.pt", out_cams=refined / "one.h5",
                     rounds_csv=refined / "one.csv")
    refine.main(fewer)
    assert "resuming after round 1" in capsys.readouterr().err
    one = load_checkpoint(refined / "one.pt")
    assert one["meta"]["refinement"]["rounds"] == 1
    round1 = load_checkpoint(refined / "state" / "round1" / "model.pt")["model"]
    assert all(torch.equal(one["model"][k], v) for k, v in round1.items())
    assert list(pd.read_csv(refined / "one.csv")["round"]) == [0, 1]
    assert passes == [index.ids("train_aug")]  # round 1's CAM file was let go: made again
    with CamReader(refined / "one.h5") as reader:
        assert reader.meta.checkpoint_sha256 == file_sha256(refined / "one.pt")

    passes.clear()
    more = cli_args(cam_run, refined, rounds=3, out=refined / "three.pt", out_cams=refined / "three.h5",
                    rounds_csv=refined / "three.csv")
    refine.main(more)
    err = capsys.readouterr().err
    assert "resuming after round 2" in err and "round 3/3" in err and "round 1/" not in err
    assert list(pd.read_csv(refined / "three.csv")["round"]) == [0, 1, 2, 3]
    assert passes == [index.ids("train_aug")]  # round 3's labels read round 2's file; one pass after training
    assert not (refined / "state" / "round2" / "cams.h5").exists()
    assert _entries(refined / "refined_cams.h5").keys() == _entries(refined / "three.h5").keys()  # a link let go


def test_changed_settings_start_over(tmp_path: Path, capsys) -> None:
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    RoundStore(tmp_path, {"settings": 1}, ctx)
    (tmp_path / "round1" / "labels").mkdir(parents=True)
    RoundStore(tmp_path, {"settings": 1}, ctx)
    assert (tmp_path / "round1" / "labels").is_dir()
    RoundStore(tmp_path, {"settings": 2}, ctx)
    assert "other settings; starting from round 1" in capsys.readouterr().err
    assert not (tmp_path / "round1").exists()
    assert json.loads((tmp_path / "meta.json").read_text()) == {"settings": 2}


def test_resume_after_sigkill_matches_uninterrupted(cam_run: Path, refined: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "stages.refine", *cli_args(cam_run, tmp_path)]
    marker = tmp_path / "state" / "round2" / "train.pt"
    sigkill_when(command, marker, tmp_path / "first.log", timeout=240)
    assert not (tmp_path / "refined.pt").exists(), "run finished before it could be killed"

    done = subprocess.run(command, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after round 1" in done.stderr and "resuming from" in done.stderr
    a, b = load_checkpoint(refined / "refined.pt"), load_checkpoint(tmp_path / "refined.pt")
    assert a["meta"] == b["meta"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    a, b = _entries(refined / "refined_cams.h5"), _entries(tmp_path / "refined_cams.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[i][0], b[i][0]) for i in a)
    for r in (1, 2):
        metrics = [pd.read_csv(d / "state" / f"round{r}" / "train_metrics.csv").drop(columns=TIMING_COLUMNS)
                   for d in (refined, tmp_path)]
        pd.testing.assert_frame_equal(*metrics)


def test_torchrun_two_processes_gloo(cam_run: Path, tmp_path: Path) -> None:
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "stages.refine",
               *cli_args(cam_run, tmp_path, rounds=1, steps=2, batch_size=2)]
    done = subprocess.run(command, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    net, meta = load_cam_net(tmp_path / "refined.pt")
    assert meta["refinement"]["rounds"] == 1
    assert list(pd.read_csv(tmp_path / "rounds.csv")["round"]) == [0, 1]
    index = DatasetIndex.load(cam_run / "index.json")
    labels = sorted(p.stem for p in (tmp_path / "state" / "round1" / "labels").glob("*.png"))
    assert labels == sorted(index.ids("train_aug"))  # both ranks' shards
    assert sorted(_entries(tmp_path / "refined_cams.h5")) == sorted(index.ids("train_aug"))  # merged


def test_bad_arguments_are_named(cam_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        refine.main(cli_args(cam_run, tmp_path, batch_size=1))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json"):
        refine.main(cli_args(cam_run, tmp_path, best=tmp_path / "bad.json"))
