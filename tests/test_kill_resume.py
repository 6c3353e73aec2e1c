"""Interrupting the workflow as a user or a scheduler would, then starting it again.

A training stage killed mid-run resumes from its last checkpoint and ends with exactly the weights
and metrics of an uninterrupted run (CPU, same seed). A kill while CAMs or pseudo labels are being
written leaves nothing under the output names.
"""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import REPO, pipeline_env, snakemake, write_config

LONG_TRAIN = {"crop_size": 64, "batch_size": 4, "steps": 24, "checkpoint_every": 4}
TARGET = "results/cam/model.pt"


def _config(workdir):
    return write_config(workdir / "config.yaml", cam={"backbone": "resnet18", "train": LONG_TRAIN})


def _start(workdir, config, *targets):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--cores", "1", *targets, "--configfile", str(config)]
    # its own session, so that a SIGKILL can take the whole process tree as an OOM killer would
    return subprocess.Popen(cmd, cwd=REPO, env=pipeline_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(path, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before {path} appeared:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def _model_and_metrics(workdir):
    state = torch.load(workdir / TARGET, weights_only=True)
    metrics = pd.read_csv(workdir / "results/cam/train_metrics.csv").drop(columns=["img_per_s"])
    return state["model"], metrics


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    snakemake(workdir, "--cores", "1", TARGET, config=_config(workdir))
    return _model_and_metrics(workdir)


@pytest.mark.workflow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "scheduler-sigterm", "sigkill"])
def test_killed_training_resumes_to_the_same_result(tmp_path, uninterrupted, signum):
    """To the whole process group, as a terminal's Ctrl-C, `scancel` or an OOM kill delivers it.

    (A SIGTERM to Snakemake alone is its graceful stop: it lets running jobs finish.)"""
    config = _config(tmp_path)
    proc = _start(tmp_path, config, TARGET)
    checkpoint = tmp_path / "results/cam/checkpoint.pt"
    _wait_for(checkpoint, proc)
    os.killpg(proc.pid, signum)
    proc.wait(timeout=120)
    assert not (tmp_path / TARGET).exists(), "an interrupted training must not leave a model file"
    step_at_kill = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step_at_kill < LONG_TRAIN["steps"]

    if signum == signal.SIGKILL:  # Snakemake had no chance to release its lock: what a user does
        snakemake(tmp_path, "--unlock", config=config)
    rerun = snakemake(tmp_path, "--cores", "1", TARGET, config=config)
    log = (tmp_path / "results/logs/train_cam.log").read_text()
    assert "resuming from" in log, rerun.stdout[-2000:]

    weights, metrics = _model_and_metrics(tmp_path)
    ref_weights, ref_metrics = uninterrupted
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    pd.testing.assert_frame_equal(metrics, ref_metrics)


def _kill_stage_midway(cmd, watch, workdir):
    """Start a stage, SIGKILL it as soon as its temporary output shows up."""
    proc = subprocess.Popen(cmd, cwd=workdir, env=pipeline_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".") for p in watch.iterdir()):
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    return proc.returncode


@pytest.mark.workflow
def test_kill_while_writing_cams_and_labels_leaves_no_complete_looking_output(tiny_run, tmp_path):
    """The stages write to hidden temporary names and rename at the end; a kill before that
    leaves the output name absent, so Snakemake (and any reader) sees the job as not done."""
    done, _ = tiny_run
    index = done / "results/dataset/index.checked.json"
    model = done / "results/cam/model.pt"
    cams = tmp_path / "cams.h5"
    code = _kill_stage_midway(
        [sys.executable, "-m", "stages.infer_cam", "--index", str(index), "--checkpoint", str(model),
         "--split", "train_aug", "--scales", "1.0", "0.5", "1.5", "2.0", "--flip", "--out", str(cams)],
        tmp_path, tmp_path)
    if code == 0:
        pytest.skip("infer_cam finished before it could be killed")
    assert not cams.exists()

    labels = tmp_path / "labels"
    code = _kill_stage_midway(
        [sys.executable, "-m", "stages.pseudo_labels", "--index", str(index), "--cams",
         str(done / "results/cam/cams_train_aug.h5"), "--split", "train_aug", "--threshold", "0.3",
         "--ignore-band", "0.05", "--use-crf", "--iterations", "10", "--gaussian-sxy", "3",
         "--gaussian-compat", "3", "--bilateral-sxy", "80", "--bilateral-srgb", "13",
         "--bilateral-compat", "10", "--workers", "1", "--out-dir", str(labels)],
        tmp_path, tmp_path)
    if code == 0:
        pytest.skip("pseudo_labels finished before it could be killed")
    assert not labels.exists()
