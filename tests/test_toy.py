"""The toy data set: deterministic, VOC layout, masks with a boundary band, labels and scribbles
that agree with the masks, and the split relations later stages rely on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages import prepare_dataset
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.scribbles import erode, object_stroke
from stages.data.toy import class_names, generate_toy
from stages.io.label_png import IGNORE, read_label

TOY_ARGS = dict(num_classes=8, num_train_aug=24, num_train=8, num_val=10, min_size=96, max_size=160, seed=3)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> DatasetIndex:
    return generate_toy(tmp_path_factory.mktemp("toy") / "data", **TOY_ARGS)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ids(index: DatasetIndex) -> list[str]:
    return list(dict.fromkeys(index.splits["train_aug"] + index.splits["val"]))


def test_same_arguments_give_identical_files_on_any_number_of_workers(toy: DatasetIndex, tmp_path: Path) -> None:
    again = generate_toy(tmp_path / "again", **TOY_ARGS, workers=2)
    first, second = _all_files(toy.root), _all_files(again.root)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert again.splits == toy.splits and again.labels == toy.labels


def test_another_seed_gives_other_images(toy: DatasetIndex, tmp_path: Path) -> None:
    other = generate_toy(tmp_path / "other", **{**TOY_ARGS, "seed": 4})
    assert other.image_path("ta00000").read_bytes() != toy.image_path("ta00000").read_bytes()


def test_layout_and_index_round_trip(toy: DatasetIndex, tmp_path: Path) -> None:
    root = toy.root
    assert root.is_absolute()
    for sub in ("JPEGImages", "SegmentationClass", "Scribbles", "ImageSets/Segmentation"):
        assert (root / sub).is_dir()
    for split, ids in toy.splits.items():
        listed = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert listed == ids
    toy.save(tmp_path / "index.json")
    loaded = DatasetIndex.load(tmp_path / "index.json")
    assert loaded == toy
    assert loaded.classes == class_names(8) and loaded.classes[0] == "background"
    assert loaded.scribble_path("ta00001").exists()


def test_splits(toy: DatasetIndex) -> None:
    s = toy.splits
    assert len(s["train_aug"]) == 24 and len(s["train"]) == 8 and len(s["val"]) == 10
    assert set(s["train"]) <= set(s["train_aug"])
    assert not set(s["val"]) & set(s["train_aug"])
    assert all(len(set(ids)) == len(ids) for ids in s.values())


def test_images_vary_in_size_and_are_not_square(toy: DatasetIndex) -> None:
    shapes = {load_rgb(toy.image_path(i)).shape for i in _ids(toy)}
    assert len(shapes) > 10
    for h, w, c in shapes:
        assert c == 3 and 96 <= h <= 160 and 96 <= w <= 160 and h != w


def test_masks_have_a_band_between_labels(toy: DatasetIndex) -> None:
    for i in _ids(toy):
        mask = read_label(toy.mask_path(i, "val"))
        assert mask.shape == load_rgb(toy.image_path(i)).shape[:2]
        assert (mask == IGNORE).any()
        valid_values = set(np.unique(mask)) - {IGNORE}
        assert valid_values <= set(range(toy.num_classes))
        # no two 4-neighbours carry different real labels: a 255 band always separates them
        for a, b in ((mask[1:], mask[:-1]), (mask[:, 1:], mask[:, :-1])):
            differ = (a != b) & (a != IGNORE) & (b != IGNORE)
            assert not differ.any(), i
        band = (mask == IGNORE).mean()
        assert 0.005 < band < 0.2


def test_labels_match_masks_and_json(toy: DatasetIndex) -> None:
    names = json.loads((toy.root / "image_labels.json").read_text())
    for i in _ids(toy):
        mask = read_label(toy.mask_path(i, "train_aug"))
        present = sorted(int(c) for c in np.unique(mask) if c not in (0, IGNORE))
        assert toy.labels[i] == present and present
        assert names[i] == [toy.classes[c] for c in present]


def test_scribbles_lie_inside_their_class(toy: DatasetIndex) -> None:
    covered = []
    for i in _ids(toy):
        mask = read_label(toy.mask_path(i, "train_aug"))
        scribbles = read_label(toy.scribble_path(i))
        strokes = scribbles != IGNORE
        assert (scribbles[strokes] == mask[strokes]).all(), i
        assert set(np.unique(scribbles[strokes])) == {0, *toy.labels[i]}, i
        covered.append(strokes.mean())
    assert 0.005 < np.mean(covered) < 0.1


def test_more_train_than_train_aug_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_train"):
        generate_toy(tmp_path, **{**TOY_ARGS, "num_train": 30})


def test_cli_writes_the_index(tmp_path: Path) -> None:
    prepare_dataset.main(["--kind", "toy", "--index", str(tmp_path / "index.json"),
                          "--root", str(tmp_path / "d"),
                          "--num-classes", "3", "--num-train-aug", "6", "--num-train", "2", "--num-val", "3",
                          "--min-size", "64", "--max-size", "80", "--seed", "0", "--no-progress"])
    index = DatasetIndex.load(tmp_path / "index.json")
    assert index.num_classes == 4 and index.name == "toy"
    assert index.root == (tmp_path / "d").resolve()
    assert all(index.image_path(i).exists() for i in index.splits["val"])


def test_cli_names_missing_flags(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        prepare_dataset.main(["--kind", "toy", "--index", str(tmp_path / "i.json"), "--root", str(tmp_path)])
    assert "--num-classes" in capsys.readouterr().err


def test_stroke_and_erosion_on_a_bar() -> None:
    bar = np.zeros((20, 40), bool)
    bar[5:15, 5:35] = True
    stroke = object_stroke(bar, np.random.default_rng(0))
    assert (stroke <= erode(bar, 2)).all()  # inside the eroded bar
    assert stroke[:, 10:30].any(axis=0).all()  # along the bar
    assert stroke.sum() < 0.5 * erode(bar, 2).sum()  # a skeleton widened by a pixel, not the bar
    assert erode(bar, 2).sum() == 6 * 26
    edge = np.ones((10, 10), bool)
    assert erode(edge, 1).sum() == 8 * 8  # beyond the border counts as outside
