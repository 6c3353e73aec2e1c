"""Temporaries of atomic writes: what a killed job leaves is removed by the next write of the
same target, and nothing else is touched."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, pipeline_env
from stages.data.index import DatasetIndex
from stages.io.atomic import atomic_dir, atomic_path, is_temporary, remove_stale_temporaries, temp_path_for, write_text
from stages.io.cam_store import CamFileMeta, CamWriter, shard_path
from stages.io.checkpoint import save_checkpoint
from stages.io.label_png import read_label


def leave_stale(target: Path, pid: int = 999_999) -> tuple[Path, Path]:
    """A file and a folder named as killed writes of ``target`` would have left them."""
    stale_file = target.with_name(f".{target.name}.tmp{pid}")
    stale_file.write_bytes(b"half written")
    stale_dir = target.with_name(f".{target.name}.tmp{pid + 1}")
    (stale_dir / "inner").mkdir(parents=True)
    (stale_dir / "inner" / "a.png").write_bytes(b"x")
    return stale_file, stale_dir


def test_temp_names_are_recognisable(tmp_path):
    tmp = temp_path_for(tmp_path / "labels")
    assert tmp.parent == tmp_path and tmp.name == f".labels.tmp{os.getpid()}"
    assert is_temporary(tmp) and is_temporary(".cams.h5.tmp42")
    assert not is_temporary("cams.h5") and not is_temporary(".cams.h5.tmp") and not is_temporary(".x.tmp4.bak")


@pytest.mark.parametrize("writer", ["write_text", "atomic_dir", "save_checkpoint", "cam_writer"])
def test_writer_removes_its_targets_leftovers_only(tmp_path, writer):
    target = tmp_path / ("out.h5" if writer == "cam_writer" else "out")
    sibling = tmp_path / "out2"  # another target in the same folder, maybe being written right now
    stale = leave_stale(target)
    sibling_tmp = sibling.with_name(f".{sibling.name}.tmp123")
    sibling_tmp.write_bytes(b"live")
    lookalikes = [tmp_path / f".{target.name}.tmpfoo", tmp_path / f".{target.name}.tmp12.bak",
                  tmp_path / f"{target.name}.tmp12"]
    for path in lookalikes:
        path.write_bytes(b"not a temporary of this target")

    if writer == "write_text":
        write_text(target, "done")
    elif writer == "atomic_dir":
        with atomic_dir(target) as d:
            (d / "a.png").write_bytes(b"new")
    elif writer == "save_checkpoint":
        save_checkpoint(target, {"step": 1})
    else:
        meta = CamFileMeta("tiny", "train", ("background", "cat"), "resnet18", (1.0,), True, "x")
        with CamWriter(target, meta) as w:
            w.write("a", np.ones((1, 4, 4)), [1])

    assert target.exists()
    assert not any(p.exists() for p in stale)
    assert sibling_tmp.read_bytes() == b"live"
    assert all(p.exists() for p in lookalikes)


def test_nothing_is_listed_inside_a_temporary_folder(tmp_path):
    """A folder made by atomic_dir is fresh and private: its files are never checked for leftovers."""
    with atomic_dir(tmp_path / "labels") as d:
        odd = d / ".a.png.tmp1"
        odd.write_bytes(b"x")
        assert remove_stale_temporaries(d / "a.png") == []
        assert odd.exists()


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "a").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_complete_cam_file_removes_shards_of_a_killed_multiprocess_run(tmp_path):
    target = tmp_path / "cams.h5"
    shards = [shard_path(target, r) for r in range(3)]
    for shard in shards:
        shard.write_bytes(b"shard")
    other = shard_path(tmp_path / "cams_val.h5", 0)
    other.write_bytes(b"another file's shard")
    meta = CamFileMeta("tiny", "train", ("background", "cat"), "resnet18", (1.0,), True, "x")
    with CamWriter(shards[0], meta) as w:  # a rank writing its shard keeps its peers' shards
        w.write("a", np.ones((1, 4, 4)), [1])
    assert all(s.exists() for s in shards)
    with CamWriter(target, meta) as w:
        w.write("a", np.ones((1, 4, 4)), [1])
    assert not any(s.exists() for s in shards) and other.exists()


# --- a real process, killed while it writes ---------------------------------------------------

N_IMAGES, SIZE = 12, 160


@pytest.fixture
def toy_cams(tmp_path) -> tuple[Path, Path]:
    """Index and CAM file for a dozen random images: slow enough with the CRF to be caught mid-run."""
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    classes = ["background", "cat", "dog"]
    ids = [f"img{i:02d}" for i in range(N_IMAGES)]
    meta = CamFileMeta("toy", "train", tuple(classes), "resnet18", (1.0,), True, "x")
    cam_path = tmp_path / "cams.h5"
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    with CamWriter(cam_path, meta) as writer:
        for k, image_id in enumerate(ids):
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                root / "JPEGImages" / f"{image_id}.jpg")
            cx, cy = rng.random(2)
            writer.write(image_id, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * 8)[None], [1 + k % 2])
    index = DatasetIndex(name="toy", root=root, classes=classes, splits={"train": ids},
                         labels={i: [1 + k % 2] for k, i in enumerate(ids)})
    index.save(tmp_path / "index.json")
    return tmp_path / "index.json", cam_path


def test_sigkilled_pseudo_labels_leave_nothing_after_the_rerun(toy_cams, tmp_path):
    index_path, cam_path = toy_cams
    out = tmp_path / "pseudo_labels" / "none" / "train"
    cmd = [sys.executable, "-m", "stages.pseudo_labels", "--index", str(index_path), "--cams", str(cam_path),
           "--split", "train", "--threshold", "0.3", "--ignore-band", "0.1", "--use-crf",
           "--iterations", "10", "--gaussian-sxy", "3", "--gaussian-compat", "3", "--bilateral-sxy", "50",
           "--bilateral-srgb", "5", "--bilateral-compat", "10", "--workers", "1", "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=pipeline_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [p for p in out.parent.glob(".train.tmp*") if p.is_dir()]
            if temps and len(list(temps[0].glob("*.png"))) >= 2:  # mid-write: some PNGs, not all
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the stage ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [p.name for p in out.parent.iterdir()]
    assert not out.exists() and len(left) == 1 and is_temporary(left[0])  # what the kill leaves

    rerun = subprocess.run(cmd, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"removed {out.parent / left[0]}" in rerun.stderr
    assert [p.name for p in out.parent.iterdir()] == ["train"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    labels = sorted(out.iterdir())
    assert [p.stem for p in labels] == [f"img{i:02d}" for i in range(N_IMAGES)]
    for path in labels:
        assert read_label(path).shape == (SIZE, SIZE)
