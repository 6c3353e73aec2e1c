"""The method contract: a method defined in the tests (tests/plugin_method.py) with two optimisers,
manual backward, an EMA copy, a step counter and a relabelling callback trains under 2-process gloo
DDP, is SIGKILLed mid-run, resumes, and ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, pipeline_env, stage_argv, toy_with_gt_labels, train_options
from stages.io.checkpoint import load_checkpoint

STEPS = 10


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return toy_with_gt_labels(tmp_path_factory.mktemp("plugin"), num_train_aug=16, min_size=40, max_size=56)


def command(index: Path, labels: Path, out: Path) -> list[str]:
    options = {"index": index, "split": "train_aug", "method": "plugin_test", "pseudo_labels": labels,
               "backbone": "resnet10t", "weights": "none", "decoder": "mlp", "out": out / "model.pt",
               "checkpoint": out / "ckpt.pt", "metrics": out / "metrics.csv", "state_dir": out / "state",
               "outputs": out / "outputs",
               **train_options(crop_size=40, scale_range=[0.8, 1.2], color_jitter=0.2, batch_size=2, steps=STEPS,
                               weight_decay=0.0, checkpoint_every=2)}
    return [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
            str(REPO / "tests" / "plugin_method.py"), *stage_argv(options)]


def env() -> dict[str, str]:
    return {**pipeline_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}


@pytest.mark.workflow
def test_plugin_method_resumes_after_sigkill_under_ddp(toy, tmp_path: Path) -> None:
    index, labels = toy
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(index, labels, whole), env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    killed.mkdir()
    with open(killed / "first.log", "w") as log:
        proc = subprocess.Popen(command(index, labels, killed), env=env(), stdout=log, stderr=log,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while not (killed / "outputs" / "relabel1.txt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the first relabelling never happened"
            time.sleep(0.05)
        time.sleep(0.5)  # into the steps after the callback
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "model.pt").exists(), "run finished before it could be killed"
    assert 3 <= load_checkpoint(killed / "ckpt.pt")["step"] < STEPS

    done = subprocess.run(command(index, labels, killed), env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming from" in done.stderr

    a, b = load_checkpoint(whole / "model.pt")["model"], load_checkpoint(killed / "model.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hooks_a, hooks_b = load_checkpoint(whole / "ckpt.pt")["hooks"], load_checkpoint(killed / "ckpt.pt")["hooks"]
    assert hooks_a["steps_seen"] == hooks_b["steps_seen"] == STEPS
    assert hooks_a["relabels"] == hooks_b["relabels"] == STEPS // 3
    assert all(torch.equal(hooks_a["ema"][k], hooks_b["ema"][k]) for k in hooks_a["ema"])
    metrics_a, metrics_b = (pd.read_csv(d / "metrics.csv").drop(columns=["img_per_s"]) for d in (whole, killed))
    pd.testing.assert_frame_equal(metrics_a, metrics_b)
    assert {"lr_o0_g0", "lr_o1_g0", "relabels"} <= set(metrics_a.columns)  # every optimiser's rate
    assert metrics_a["relabels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    notes = sorted(p.name for p in (killed / "outputs").iterdir())
    assert notes == ["relabel1.txt", "relabel2.txt", "relabel3.txt"]
    assert (killed / "outputs" / "relabel3.txt").read_text() == (whole / "outputs" / "relabel3.txt").read_text()
