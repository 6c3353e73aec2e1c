"""Errors a person reads first: bad input is one line naming the file or key, the traceback only on
request; a defect keeps its traceback after the same first line."""
from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, pipeline_env
from stages import errors
from stages.data.toy import generate_toy
from stages.data.voc_folder import read_voc_folder


def _stage(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**pipeline_env(), errors.DEBUG_VARIABLE: "1" if debug else "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _eval_cam_args(tmp_path: Path) -> list[str]:
    index = tmp_path / "index.json"
    index.write_text("{truncated")
    return ["--index", str(index), "--cams", str(tmp_path / "cams.h5"), "--split", "train",
            "--threshold-start", "0", "--threshold-stop", "0.5", "--threshold-step", "0.1",
            "--out-sweep", str(tmp_path / "s.csv"), "--out-per-class", str(tmp_path / "p.csv"),
            "--out-best", str(tmp_path / "b.json")]


@pytest.mark.parametrize("launcher", [[], ["stages.launch", "--gpus", "1"]], ids=["python-m", "launch"])
def test_bad_input_is_one_line_without_traceback(tmp_path: Path, launcher: list[str]) -> None:
    args = [*launcher, "stages.eval_cam", *_eval_cam_args(tmp_path)] if launcher else \
        ["stages.eval_cam", *_eval_cam_args(tmp_path)]
    proc = _stage(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"eval_cam: error: {tmp_path / 'index.json'}: cannot read the data set index")
    assert "Traceback" not in proc.stderr and lines[-1] == f"({errors.DEBUG_VARIABLE}=1 shows the traceback)"


def test_debug_flag_adds_the_traceback(tmp_path: Path) -> None:
    proc = _stage("stages.eval_cam", *_eval_cam_args(tmp_path), debug=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith("eval_cam: error: ")
    assert "Traceback (most recent call last)" in proc.stderr


def test_a_defect_keeps_its_traceback_after_the_first_line() -> None:
    def broken() -> None:
        {}["no such key"]  # a bug, not bad input: KeyError raised outside the stage's checks

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as info:
        errors.run_stage(broken, "demo")
    assert info.value.code == 1
    lines = stderr.getvalue().splitlines()
    assert lines[0] == "demo: error: 'no such key'" and lines[1] == "Traceback (most recent call last):"


@pytest.mark.parametrize("labels, shown", [("dog", '"dog"'), ({"cls": "dog"}, '{"cls": "dog"}'), ([1], "[1]")])
def test_image_labels_of_the_wrong_json_type_are_named(tmp_path: Path, labels: object, shown: str) -> None:
    """A string is not split into one-letter classes: the id and the value are named."""
    index = generate_toy(tmp_path / "toy", num_classes=2, num_train_aug=4, num_train=2, num_val=1,
                         min_size=40, max_size=48, seed=0)
    path = tmp_path / "toy" / "image_labels.json"
    data = json.loads(path.read_text())
    first = index.ids("train_aug")[0]
    data[first] = labels
    path.write_text(json.dumps(data))
    with pytest.raises(errors.InputError,
                       match=rf"image_labels.json: the labels of '{first}' are {re.escape(shown)}, not a list"):
        read_voc_folder(tmp_path / "toy", "json")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
@pytest.mark.parametrize("writer", ["python", "torch.save"])
def test_a_full_disk_met_outside_the_atomic_writers_is_one_line(writer: str) -> None:
    """Writes through ``atomic_path`` name their file (tests/test_bad_input.py, on a small tmpfs);
    any other write that meets a full device (here /dev/full, for real) is still bad input, not a
    defect: one line, exit 2, whatever the library wrapped ENOSPC in (torch: a RuntimeError)."""
    import torch

    def write() -> None:
        with open("/dev/full", "wb") as f:
            if writer == "python":
                f.write(b"x")
            else:
                torch.save({"w": torch.zeros(1000)}, f)

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as info:
        errors.run_stage(write, "demo")
    assert info.value.code == 2
    assert stderr.getvalue().splitlines() == [
        "demo: error: an output file: no space left on the device while writing it; free space "
        "(df -h <output folder>) and rerun", f"({errors.DEBUG_VARIABLE}=1 shows the traceback)"]
