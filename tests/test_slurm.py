"""The tiny workflow through a real single-node Slurm with the project's own slurm profile."""
import filecmp
import json
import shutil

import pandas as pd
import pytest
from slurm_node import SlurmNode, install, why_not_available

from conftest import snakemake

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


@pytest.mark.slurm
def test_tiny_workflow_on_slurm_equals_local_run(slurm, tiny_run, tmp_path):
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
        pd.testing.assert_frame_equal(pd.read_csv(ours / csv), pd.read_csv(theirs / csv), obj=csv)
    labels = sorted(p.name for p in (theirs / "pseudo_labels/none/train_aug").glob("*.png"))
    match, mismatch, errors = filecmp.cmpfiles(ours / "pseudo_labels/none/train_aug",
                                               theirs / "pseudo_labels/none/train_aug", labels, shallow=False)
    assert not mismatch and not errors and len(match) == len(labels) > 0
    # the devices rule ran as a Slurm job and saw the (fake) GPU that Slurm assigned to it
    seen = json.loads((ours / "devices.json").read_text())["ranks"][0]
    assert seen["launch"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "SLURM_JOB_ID" in seen["slurm"]
