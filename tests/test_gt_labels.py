"""``pseudo_labels: gt``: the ground-truth masks as a label folder (stages/gt_labels.py), and the
workflow's ORACLE rows that read it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import planned_jobs, write_config
from stages.data.toy import generate_toy
from stages.errors import InputError, MissingInputError
from stages.gt_labels import write_gt_labels
from stages.io.label_png import read_label, write_label


@pytest.fixture
def toy(tmp_path: Path):
    return generate_toy(tmp_path / "data", num_classes=3, num_train_aug=4, num_train=2, num_val=2,
                        min_size=32, max_size=40, seed=0)


def test_labels_are_the_masks(toy, tmp_path: Path) -> None:
    assert write_gt_labels(toy, "train_aug", tmp_path / "gt", progress=False) == 4
    for image_id in toy.ids("train_aug"):
        mask = read_label(toy.mask_path(image_id, "train_aug"))
        assert np.array_equal(read_label(tmp_path / "gt" / f"{image_id}.png"), mask)


def test_a_missing_mask_is_named(toy, tmp_path: Path) -> None:
    gone = toy.mask_path(toy.ids("train_aug")[1], "train_aug")
    gone.unlink()
    with pytest.raises(MissingInputError, match=rf"1 missing, e\.g\. {gone}"):
        write_gt_labels(toy, "train_aug", tmp_path / "gt", progress=False)


def test_a_mask_with_values_beyond_the_classes_is_refused(toy, tmp_path: Path) -> None:
    path = toy.mask_path(toy.ids("train_aug")[0], "train_aug")
    mask = read_label(path)
    mask[0, 0] = 7
    write_label(path, mask)
    with pytest.raises(InputError, match=rf"{path}: values \[7\] are neither classes 0-3 nor 255"):
        write_gt_labels(toy, "train_aug", tmp_path / "gt", progress=False)


def test_an_oracle_variant_reads_the_gt_folder_and_no_pseudo_labels(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", refinements={"none": {"method": "none"}},
                          variants={"ce_ORACLE": {"method": "ce", "pseudo_labels": "gt"}})
    jobs = planned_jobs(tmp_path, config, "results/eval/ce_ORACLE/metrics.csv")
    assert jobs["gt_labels"] == 1 and jobs["train_seg"] == 1 and "pseudo_labels" not in jobs
