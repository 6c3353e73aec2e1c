"""IRN affinity refinement: confident regions and pair labels, the loss, the transition matrix and
the random walk on hand-made examples, the stage end to end on a toy set (with a kill), and its
workflow plumbing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import sigkill_when, snakemake, stage_argv, train_options, write_config
from stages import refine_irn
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.errors import InputError
from stages.io.cam_store import CamEntry, CamFileMeta, CamReader, CamWriter
from stages.io.checkpoint import file_sha256, load_checkpoint, save_model
from stages.io.label_png import IGNORE, read_label
from stages.irn.labels import ConfidenceThresholds, PairLabels, confident_label_settings, pair_labels
from stages.irn.pairs import half_offsets
from stages.irn.training import affinity_loss
from stages.irn.walk import WalkSettings, random_walk, transition_matrix, walk_cams
from stages.labels.pseudo import pseudo_label
from stages.models.cam_net import CAMNet

RIGHT, DOWN_LEFT, DOWN, DOWN_RIGHT = range(4)  # half_offsets(2): (0, 1), (1, -1), (1, 0), (1, 1)


def test_half_offsets_list_each_pair_direction_once() -> None:
    assert half_offsets(2) == ((0, 1), (1, -1), (1, 0), (1, 1))
    offsets = half_offsets(5)
    assert len(offsets) == 34  # AffinityNet's neighbourhood at radius 5
    assert not set(offsets) & {(-dy, -dx) for dy, dx in offsets}
    assert all(0 < dy * dy + dx * dx < 25 for dy, dx in offsets)


def test_confident_regions_and_their_pairs_from_a_hand_made_cam() -> None:
    cam = np.array([[0.9, 0.9, 0.5, 0.0],
                    [0.9, 0.7, 0.3, 0.0],
                    [0.0, 0.0, 0.0, 0.1]], dtype=np.float32)[None]
    settings = confident_label_settings(bg=0.1, fg=0.6, crf=None, num_classes=4)
    label = pseudo_label(None, CamEntry(cam, np.array([2])), settings)
    assert label.tolist() == [[2, 2, IGNORE, 0],
                              [2, 2, IGNORE, 0],
                              [0, 0, 0, 0]]  # 0.1 is "at or below" bg: confident background

    pairs = pair_labels(torch.from_numpy(label.astype(np.int64))[None], half_offsets(2))
    assert isinstance(pairs, PairLabels) and pairs.fg_pos.shape == (1, 4, 3, 4)
    at = {name: getattr(pairs, name)[0] for name in ("bg_pos", "fg_pos", "neg")}
    assert at["fg_pos"][RIGHT, 0, 0] and at["fg_pos"][DOWN, 0, 0] and at["fg_pos"][DOWN_RIGHT, 0, 0]
    assert at["neg"][DOWN, 1, 0] and at["neg"][DOWN_LEFT, 1, 1]  # object above background
    assert at["bg_pos"][RIGHT, 2, 0] and at["bg_pos"][DOWN, 0, 3]
    for name in at:  # pairs touching the unknown column or leaving the grid carry no label
        assert not at[name][RIGHT, 0, 1] and not at[name][DOWN, 0, 2] and not at[name][DOWN, 2, 0]
        assert not at[name][RIGHT, :, 3].any() and not at[name][DOWN_LEFT, :, 0].any()
    groups = torch.stack([at["bg_pos"], at["fg_pos"], at["neg"]])
    assert groups.sum(0).max() <= 1  # each pair in one group at most
    assert (at["fg_pos"].sum(), at["neg"].sum()) == (6, 5)


def test_thresholds_relative_to_the_best_threshold_or_absolute() -> None:
    assert ConfidenceThresholds("relative", fg=2.0, bg=0.33).resolve(0.15) == pytest.approx((0.0495, 0.30))
    assert ConfidenceThresholds("absolute", fg=0.3, bg=0.05).resolve(0.6) == (0.05, 0.3)
    with pytest.raises(InputError, match="thresholds: absolute"):
        ConfidenceThresholds("relative", fg=2.0, bg=0.3).resolve(0.0)
    with pytest.raises(InputError, match="bg_threshold < fg_threshold"):
        ConfidenceThresholds("absolute", fg=0.1, bg=0.2).resolve(0.15)


def test_loss_is_small_for_right_affinities_and_large_for_wrong_ones() -> None:
    label = torch.tensor([[[0, 0, 1, 1]]])
    pairs = pair_labels(label, half_offsets(2))
    right = pairs.bg_pos.float() + pairs.fg_pos.float()  # 1 on same-label pairs, 0 elsewhere
    good, bad = affinity_loss(right, pairs), affinity_loss(1 - right, pairs)
    assert good["loss"] < 1e-3 < 5 < bad["loss"]
    assert bad["loss"] == pytest.approx(bad["bg_pos"] / 4 + bad["fg_pos"] / 4 + bad["neg"] / 2)


def test_transition_matrix_rows_sum_to_one_over_symmetric_weights() -> None:
    offsets = half_offsets(3)
    affinity = torch.rand(len(offsets), 5, 7, generator=torch.Generator().manual_seed(0))
    dense = transition_matrix(affinity, offsets, beta=2.0).to_dense()
    assert torch.allclose(dense.sum(dim=1), torch.ones(35))
    degree = 1 / dense.diagonal()  # self-loops have weight 1, so the diagonal is 1 / row sum
    weights = dense * degree.unsqueeze(1)
    assert torch.allclose(weights, weights.T, atol=1e-5)
    assert weights[0, 2] == pytest.approx(float(affinity[1, 0, 0]) ** 2)  # offset (0, 2) from (0, 0)
    assert weights[0, 3] == 0 and weights[0, 21] == 0  # farther than the radius


def two_regions(h: int = 6, w: int = 10, across: float = 0.05) -> tuple[torch.Tensor, tuple]:
    """Affinities of a grid split into left and right halves: 1 inside a half, ``across`` over the edge."""
    offsets = half_offsets(3)
    column = torch.arange(w).expand(h, w)
    affinity = torch.stack([torch.where((column < w // 2) == (column + dx < w // 2), 1.0, across)
                            for _, dx in offsets])
    return affinity, offsets


def test_random_walk_spreads_a_seed_through_its_region_and_not_across_the_edge() -> None:
    affinity, offsets = two_regions()
    seed = torch.zeros(6 * 10, 1)
    seed[2 * 10 + 1] = 1.0  # one node of the left half
    walked = random_walk(transition_matrix(affinity, offsets, beta=8.0), seed, steps=64).view(6, 10)
    left, right = walked[:, :5], walked[:, 5:]
    assert left.min() > 0.5 * left.mean() and right.max() < 1e-6 * left.min()


def test_walk_turns_the_weak_part_of_an_object_to_foreground() -> None:
    affinity, offsets = two_regions()
    cams = torch.zeros(1, 24, 40)  # the image at stride 4 over the 6 x 10 grid; left half = the object
    cams[0, :, :12] = 1.0
    cams[0, :, 12:20] = 0.1  # weak: AffinityNet's argmax calls it background before the walk
    assert 0.1 / (0.1 + 0.9 ** 16) < 0.5
    refined = walk_cams(cams, affinity, offsets, WalkSettings(beta=8.0, log_t=6, alpha=16.0))
    assert refined.shape == cams.shape and 0 <= refined.min() and refined.max() <= 1
    assert refined[0, :, :16].min() > 0.5  # the whole object, its weak part included
    assert refined[0, :, 24:].max() < 1e-3  # nothing across the edge (columns 16-23 mix both cells)


# --- the stage on a toy set ------------------------------------------------------------------

def _fake_cams(index: DatasetIndex, split: str, path: Path) -> None:
    """Partial CAMs of a split from its masks: each object blurred and weaker on its right side."""
    meta = CamFileMeta(dataset=index.name, split=split, classes=tuple(index.classes), backbone="resnet18",
                       scales=(1.0,), flip=False, checkpoint_sha256="hand-made")
    with CamWriter(path, meta) as writer:
        for image_id in index.ids(split):
            mask = torch.from_numpy(read_label(index.mask_path(image_id, split)).astype(np.int64))
            present = index.labels[image_id]
            objects = torch.stack([(mask == c).float() for c in present])[None]
            cams = F.avg_pool2d(objects, 7, stride=1, padding=3)[0] * torch.linspace(1, 0.2, mask.shape[1])
            writer.write(image_id, (cams / cams.amax(dim=(1, 2), keepdim=True)).numpy(), present)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("irn")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=8, num_train=4, num_val=2,
                         min_size=48, max_size=64, seed=0)
    index.save(root / "index.json")
    for split in ("train_aug", "train"):
        _fake_cams(index, split, root / f"cams_{split}.h5")
    (root / "best.json").write_text(json.dumps({"threshold": 0.2, "miou": 0.3}))
    cam_net = CAMNet("resnet18", index.num_classes - 1)
    save_model(root / "cam.pt", cam_net, {"backbone": "resnet18", "weights": "none", "pooling": "gap",
                                          "num_classes": index.num_classes - 1, "classes": index.classes,
                                          "dataset": index.name})
    return root


def train_argv(toy: Path, out: Path, **overrides) -> list[str]:
    opts = {"index": toy / "index.json", "split": "train_aug", "cams": toy / "cams_train_aug.h5",
            "best": toy / "best.json", "cam_checkpoint": toy / "cam.pt", "out": out / "affinity.pt",
            "metrics": out / "metrics.csv", "state_dir": out / "state", "thresholds": "relative",
            "fg_threshold": 2.0, "bg_threshold": 0.33, "radius": 4, "stride": 4, "embedding_dim": 16,
            "decoder": "mlp", "init": "cam",
            **train_options(crop_size=48, scale_range=[0.9, 1.1], batch_size=4, steps=3, checkpoint_every=1),
            "iterations": 1, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 50,
            "bilateral_srgb": 5, "bilateral_compat": 10, **overrides}
    return ["train", "--use-crf"] + stage_argv(opts)


@pytest.fixture(scope="module")
def trained(toy: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("irn_trained")
    refine_irn.main(train_argv(toy, out))
    return out


def test_confident_labels_and_training_metrics(toy: Path, trained: Path) -> None:
    index = DatasetIndex.load(toy / "index.json")
    labels = sorted((trained / "state" / "labels").glob("*.png"))
    assert [p.stem for p in labels] == sorted(index.ids("train_aug"))
    values = set().union(*(np.unique(read_label(p)).tolist() for p in labels))
    assert {0, IGNORE} <= values <= {0, IGNORE, *range(1, index.num_classes)} and len(values) > 2
    stamp = json.loads((trained / "state" / "labels.json").read_text())
    assert stamp["fg"] == pytest.approx(0.4) and stamp["bg"] == pytest.approx(0.066)
    assert stamp["cams_sha256"] == file_sha256(toy / "cams_train_aug.h5")
    metrics = pd.read_csv(trained / "metrics.csv")
    assert list(metrics["step"]) == [1, 2, 3]
    assert {"loss", "bg_pos", "fg_pos", "neg", "bg_pos_pairs", "fg_pos_pairs", "neg_pairs"} <= set(metrics)
    assert (metrics[["bg_pos_pairs", "fg_pos_pairs", "neg_pairs"]] > 0).all().all()


def test_walk_writes_a_cam_file_of_the_source_split(toy: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "cams_train.h5"
    refine_irn.main(["walk", "--index", str(toy / "index.json"), "--split", "train", "--cams",
                     str(toy / "cams_train.h5"), "--model", str(trained / "affinity.pt"), "--beta", "8",
                     "--log-t", "4", "--alpha", "16", "--device", "cpu", "--out", str(out)])
    index = DatasetIndex.load(toy / "index.json")
    with CamReader(out) as refined, CamReader(toy / "cams_train.h5") as source:
        refined.check_matches(index, index.ids("train"))
        assert sorted(refined.ids()) == sorted(index.ids("train"))
        assert refined.meta.split == "train" and refined.meta.source == "refine_irn"
        assert refined.meta.checkpoint_sha256 == file_sha256(trained / "affinity.pt")
        provenance = json.loads(refined.meta.refinement)
        assert provenance["method"] == "irn" and provenance["log_t"] == 4 and provenance["radius"] == 4
        assert provenance["source_checkpoint_sha256"] == "hand-made"
        for image_id, entry in refined.entries():
            before = source.read(image_id)
            assert entry.cams.shape == before.cams.shape
            assert entry.class_indices.tolist() == before.class_indices.tolist()
            assert 0 <= entry.cams.min() and entry.cams.max() <= 1


def test_a_killed_training_resumes_with_its_labels(toy: Path, tmp_path: Path, capsys) -> None:
    argv = train_argv(toy, tmp_path, init="none", weights="none")  # and without the CAM network's weights
    argv[1] = "--no-use-crf"
    state = tmp_path / "state"
    sigkill_when([sys.executable, "-m", "stages.refine_irn", *argv], state / "train.pt", tmp_path / "killed.log",
                 timeout=120)
    assert not (tmp_path / "affinity.pt").exists()
    refine_irn.main(argv)
    err = capsys.readouterr().err
    assert "confident regions already in" in err and "resuming from" in err
    assert list(pd.read_csv(tmp_path / "metrics.csv")["step"]) == [1, 2, 3]
    assert json.loads((state / "labels.json").read_text())["crf"] is None
    assert load_checkpoint(tmp_path / "affinity.pt")["meta"]["init"] == {"from": "none", "sha256": None}


# --- workflow plumbing (dry runs) ------------------------------------------------------------

def test_irn_after_plmix_reads_plmix_cams_and_feeds_a_variant(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml",
                       refinements={"irn": {"method": "irn", "source": "plmix", "beta": 10}},
                       variants={"ce_irn": {"method": "ce", "pseudo_labels": "irn"}})
    commands = snakemake(tmp_path, "-n", "-p", "--cores", "1", config=cfg).stdout.splitlines()
    # (the tiny config has an IRN refinement of its own, plmix_irn)
    [train] = [line for line in commands if "stages.refine_irn train" in line and "refine/irn/" in line]
    [walk] = [line for line in commands if "stages.refine_irn walk" in line and "refine/irn/" in line]
    assert not [line for line in commands if "stages.infer_cam" in line and "refine/irn" in line]
    assert any("stages.train_seg" in line and "--pseudo-labels results/pseudo_labels/irn/" in line
               for line in commands)
    assert "--cams results/refine/plmix/cams_train_aug.h5 --best results/refine/plmix/eval/best.json" in train
    assert "--thresholds relative" in train and "--beta" not in train and "--steps 200" in train
    assert "--cams results/refine/plmix/cams_train_aug.h5" in walk and "--beta 10 --log-t 8" in walk


@pytest.mark.parametrize("source, message", [
    ("nope", "refinements.irn.source: 'nope' names no refinement"),
    ("irn", "refinements.irn.source: sources form a cycle irn -> irn"),
])
def test_a_source_that_is_no_refinement_or_a_cycle_is_refused(tmp_path: Path, source: str, message: str) -> None:
    cfg = write_config(tmp_path / "config.yaml", refinements={"irn": {"method": "irn", "source": source}})
    proc = snakemake(tmp_path, "-n", "--cores", "1", config=cfg, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
