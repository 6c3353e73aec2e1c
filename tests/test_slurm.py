"""The tiny workflow through a real single-node Slurm with the project's own slurm profile."""
import filecmp
import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
from slurm_node import SlurmNode, install, why_not_available

from conftest import snakemake
from stages.io.cam_store import CamReader
from stages.io.label_png import read_label

# What this one-node cluster needs on top of `--profile slurm`: no accounting, no job wider than
# its 2 CPUs (training rules ask for 4 threads), and short polling so each job takes seconds.
# `--set-threads` gives every job the threads it had in the local run (--cores 2: one after
# train_cam, `side_by_side`; a cluster run would give two here): CPU kernels split their sums by
# thread count, and on the toy set 1 and 2 threads gave (by hand) 68 of 400 CAM entries that differ by one
# 8-bit level, which can move a pseudo-label pixel (one did, in one suite run).
CLUSTER_OVERRIDES = ["--slurm-no-account", "--slurm-status-command", "squeue", "--max-threads", "2",
                     "--set-threads", *(f"{rule}=1" for rule in ("infer_cam", "pseudo_labels", "train_seg",
                                                                  "evaluate")),
                     "--slurm-init-seconds-before-status-checks", "1",
                     "--seconds-between-status-checks", "1"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    install()
    node = SlurmNode(tmp_path_factory.mktemp("slurm"))
    try:
        node.start()
        yield node
    finally:
        node.stop()


# How far the Slurm run may stray from the local one. Every job gets the local run's threads; on
# the CI machine two runs still differed in the pseudo labels of 1 and 2 of the 24 images (CSVs
# identical). The images were ta00013 and ta00018, whose scale-0.5 canvas was 32 px wide: bf16
# resnet18 on such canvases varies from process to process (`MIN_CANVAS_SIDE` in
# stages/cams/multiscale.py now keeps CAM inference off them; evaluation at scale 0.5 can still
# meet one). Measured by hand on the tiny run's 124k label pixels: moving 1% of all CAM values by
# one 8-bit level changes 10 label pixels; CAMs in fp32 instead of bf16 change 463 (a wrong
# setting in a job: the bound below catches it).
MAX_LABEL_MISMATCH = 1e-3  # fraction of all pseudo-label pixels
SCORE_ATOL = 5e-3


def label_mismatch(ours: Path, theirs: Path) -> dict[str, int]:
    """Image id -> pixels whose label differs, for the images whose label files are not identical."""
    names = sorted(p.name for p in theirs.glob("*.png"))
    _, mismatch, errors = filecmp.cmpfiles(ours, theirs, names, shallow=False)
    assert not errors, f"label files missing from the Slurm run: {errors}"
    return {Path(name).stem: int((read_label(ours / name) != read_label(theirs / name)).sum())
            for name in mismatch}


def cam_mismatch(ours: Path, theirs: Path) -> dict[str, int]:
    """Image id -> CAM values that differ, for the entries of two CAM files that are not equal."""
    with CamReader(ours) as a, CamReader(theirs) as b:
        counts = {i: int((a.read(i).cams != b.read(i).cams).sum()) for i in b.ids()}
    return {i: n for i, n in counts.items() if n}


@pytest.mark.slurm
def test_tiny_workflow_on_slurm_matches_local_run(slurm, tiny_run, tmp_path):
    local, config = tiny_run
    shutil.copy(config, tmp_path / "config.yaml")
    compared = ["cam/eval/sweep.csv", "pseudo_labels/none/eval/summary.csv", "eval/ce/metrics.csv",
                "eval/ce/per_class.csv"]
    # the trunk and one variant as Slurm jobs: the other variants would only add train_seg jobs of
    # the same kind, at minutes of the suite's budget
    snakemake(tmp_path, "--profile", "slurm", *CLUSTER_OVERRIDES, *(f"results/{c}" for c in compared),
              "results/devices.json", config=tmp_path / "config.yaml", slurm=True)
    ours, theirs = tmp_path / "results", local / "results"
    for csv in compared:
        pd.testing.assert_frame_equal(pd.read_csv(ours / csv), pd.read_csv(theirs / csv), obj=csv,
                                      check_exact=False, rtol=0, atol=SCORE_ATOL)
    labels = theirs / "pseudo_labels/none/train_aug"
    pixels = sum(read_label(p).size for p in labels.glob("*.png"))
    assert pixels > 0
    differing = label_mismatch(ours / "pseudo_labels/none/train_aug", labels)
    if differing:
        warnings.warn(f"Slurm and local pseudo labels differ in {sum(differing.values())} of {pixels} "
                      f"pixels: {differing}; CAM entries that differ: "
                      f"{cam_mismatch(ours / 'cam/cams_train_aug.h5', theirs / 'cam/cams_train_aug.h5')}")
    assert sum(differing.values()) <= MAX_LABEL_MISMATCH * pixels, differing
    # the devices rule ran as a Slurm job and saw the (fake) GPU that Slurm assigned to it
    seen = json.loads((ours / "devices.json").read_text())["ranks"][0]
    assert seen["launch"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "SLURM_JOB_ID" in seen["slurm"]
