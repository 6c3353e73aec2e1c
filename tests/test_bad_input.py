"""Bad input, systematically: every defect is handled, or stopped by an error naming the file or key.

Three groups, one test id per case:

- a VOC-format folder holding one image of each defect goes through the stages as the workflow
  runs them (``python -m stages.<name>``): check_dataset with ``stop`` fails and its report names
  every bad file (decompression bombs included); with ``skip`` the rest goes on through
  train_cam, infer_cam, eval_cam and pseudo_labels, and the grayscale, CMYK and non-ASCII images
  come out at the far end;
- stage inputs that do not belong together (a CAM file of another data set, a truncated one, a
  CAM network for another class list, a pseudo-label folder lacking ids, ...), data-set files
  prepare_dataset must refuse (a list file or label file linked outside the folder, a list file
  that is not UTF-8, an id with an invisible character), and config values that only a stage can
  judge (a backbone name, a split name, a weights file);
- configuration mistakes, which Snakemake must refuse before any job runs.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import unicodedata
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from hostile_cams import HOSTILE, make_hostile
from PIL import Image

from conftest import REPO, pipeline_env, snakemake, stage_argv, train_options, write_config
from stages import errors
from stages.cams.foreign import image_size
from stages.data.checks import check_index
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.io.cam_store import CamReader
from stages.io.label_png import read_label, write_label

NUM_CLASSES = 3          # toy object classes; with background the index has 4
FOLDER_NAME = "voc"      # both data sets below share it, so only their class lists differ
NON_ASCII_ID = "bäume_図01"
NFD_ID = "café_nfd"  # listed in NFC, its files named in NFD (as macOS writes names)
# Sizes the stages, which run with PIL's default limit, must refuse: beyond twice the limit (PIL's
# DecompressionBombError) and between once and twice (PIL only warns, then would decode 100 MB)
BOMB_SIZES = {"beyond_twice_the_limit": (20_000, 20_000), "beyond_the_limit": (10_000, 10_000)}
BOMB_PROBLEM = "beyond PIL's decompression-bomb limit"

# ---------------------------------------------------------------------------------------------
# A data set with one image of each defect


def _jpeg(root: Path, image_id: str) -> Path:
    return root / "JPEGImages" / f"{image_id}.jpg"


def _mask(root: Path, image_id: str) -> Path:
    return root / "SegmentationClass" / f"{image_id}.png"


def _list_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _reencode(mode: str) -> Callable[[Path, str], str]:
    def apply(root: Path, image_id: str) -> str:
        with Image.open(_jpeg(root, image_id)) as im:
            converted = im.convert(mode)
        converted.save(_jpeg(root, image_id), format="JPEG", quality=90)
        return image_id
    return apply


def _truncated_jpeg(root: Path, image_id: str) -> str:
    _truncate(_jpeg(root, image_id))
    return image_id


def _mask_wrong_size(root: Path, image_id: str) -> str:
    write_label(_mask(root, image_id), read_label(_mask(root, image_id))[:-5])
    return image_id


def _mask_invalid_class(root: Path, image_id: str) -> str:
    label = read_label(_mask(root, image_id))
    label[:3, :3] = 17
    write_label(_mask(root, image_id), label)
    return image_id


def _mask_missing(root: Path, image_id: str) -> str:
    _mask(root, image_id).unlink()
    return image_id


def _mask_not_png(root: Path, image_id: str) -> str:
    _mask(root, image_id).write_bytes(b"this is not a PNG file\n")
    return image_id


def _image_missing(root: Path, image_id: str) -> str:
    _jpeg(root, image_id).unlink()
    return image_id


def _listed_twice(root: Path, image_id: str) -> str:
    with _list_file(root, "train").open("a", encoding="utf-8") as f:
        f.write(f"{image_id}\n")
    return image_id


def bomb_png(path: Path, width: int, height: int) -> None:
    """A grayscale PNG that declares ``width`` x ``height`` but holds one row: under 100 bytes on disk.
    PIL judges the size from the header, so to it this is a decompression bomb like one whose pixels
    were all there (which would take seconds to compress here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, not interlaced
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def _bomb(file_of: Callable[[Path, str], Path], size: tuple[int, int]) -> Callable[[Path, str], str]:
    def apply(root: Path, image_id: str) -> str:
        bomb_png(file_of(root, image_id), *size)
        return image_id
    return apply


def _no_image_label(root: Path, image_id: str) -> str:
    path = root / "image_labels.json"
    labels = json.loads(path.read_text(encoding="utf-8"))
    del labels[image_id]
    path.write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    return image_id


def _add_copy(root: Path, image_id: str, stored: str, listed: str, splits: tuple[str, ...]) -> str:
    """A copy of the image and mask stored as ``stored``, listed in ``splits`` and labelled (UTF-8) as
    ``listed``."""
    shutil.copy(_jpeg(root, image_id), _jpeg(root, stored))
    shutil.copy(_mask(root, image_id), _mask(root, stored))
    for split in splits:
        with _list_file(root, split).open("a", encoding="utf-8") as f:
            f.write(f"{listed}\n")
    path = root / "image_labels.json"
    labels = json.loads(path.read_text(encoding="utf-8"))
    labels[listed] = labels[image_id]
    path.write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    return listed


def _non_ascii_name(root: Path, image_id: str) -> str:
    """A copy of the image under a non-ASCII id, listed in train and train_aug, labels in UTF-8."""
    return _add_copy(root, image_id, NON_ASCII_ID, NON_ASCII_ID, ("train", "train_aug"))


def _name_in_another_unicode_form(root: Path, image_id: str) -> str:
    """A copy of the image and mask under an NFD name, listed (and labelled) under its NFC form."""
    return _add_copy(root, image_id, unicodedata.normalize("NFD", NFD_ID), NFD_ID, ("train",))


@dataclass(frozen=True)
class Defect:
    apply: Callable[[Path, str], str]  # (folder, a clean train id) -> the id it concerns
    problem: str | None                # excerpt of check_dataset's report; None = must be accepted
    names_file: bool = True            # whether the report row names a file (not only the id)


DEFECTS = {
    "truncated_jpeg": Defect(_truncated_jpeg, "cannot read image (image file is truncated"),
    "grayscale_jpeg": Defect(_reencode("L"), None),
    "cmyk_jpeg": Defect(_reencode("CMYK"), None),
    "non_ascii_file_name": Defect(_non_ascii_name, None),
    "mask_wrong_size": Defect(_mask_wrong_size, "differs from the image's"),
    "mask_invalid_class": Defect(_mask_invalid_class, "has values [17] outside 0..3 and 255"),
    "mask_missing": Defect(_mask_missing, "mask missing"),
    "mask_not_png": Defect(_mask_not_png, "cannot read mask"),
    "image_missing": Defect(_image_missing, "image missing"),
    "id_listed_twice": Defect(_listed_twice, "listed 2 times in split 'train'", names_file=False),
    "no_image_label": Defect(_no_image_label, "no image-level label", names_file=False),
    "image_decompression_bomb": Defect(_bomb(_jpeg, BOMB_SIZES["beyond_twice_the_limit"]), BOMB_PROBLEM),
    "mask_decompression_bomb": Defect(_bomb(_mask, BOMB_SIZES["beyond_the_limit"]), BOMB_PROBLEM),
    "file_name_in_another_unicode_form": Defect(_name_in_another_unicode_form,
                                                f"image missing, but '{unicodedata.normalize('NFD', NFD_ID)}.jpg' "
                                                f"is there"),
}
BAD = [name for name, d in DEFECTS.items() if d.problem]
ACCEPTED = [name for name, d in DEFECTS.items() if not d.problem]


def make_toy_folder(parent: Path, num_classes: int, num_train_aug: int, num_train: int) -> Path:
    root = parent / FOLDER_NAME
    generate_toy(root, num_classes=num_classes, num_train_aug=num_train_aug, num_train=num_train,
                 num_val=2, min_size=40, max_size=56, seed=1)
    return root


def run_stage(name: str, *args: object, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """``python -m stages.<name>`` as a workflow rule runs it."""
    cmd = [sys.executable, "-m", f"stages.{name}", *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"stages.{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def train_flags(steps: int) -> list[str]:
    return stage_argv(train_options(crop_size=32, scale_range=[0.9, 1.1], color_jitter=0.1, batch_size=2, steps=steps))


def cam_train_args(index: Path, out_dir: Path, steps: int) -> list[object]:
    return ["--index", index, "--split", "train_aug", "--out", out_dir / "model.pt",
            "--checkpoint", out_dir / "checkpoint.pt", "--metrics", out_dir / "metrics.csv",
            "--backbone", "resnet18", "--weights", "none", "--pooling", "gap", *train_flags(steps)]


CRF_FLAGS = ["--use-crf", "--iterations", 2, "--gaussian-sxy", 3, "--gaussian-compat", 3,
             "--bilateral-sxy", 80, "--bilateral-srgb", 13, "--bilateral-compat", 10]


@dataclass(frozen=True)
class Pipeline:
    """The defective data set's run through the stages: what check_dataset said, what came out."""

    clean_root: Path            # the folder before the defects, for variants of it
    root: Path
    ids: dict[str, str]         # defect name -> the image id it concerns
    stop: subprocess.CompletedProcess
    report: list[dict[str, str]]
    checked: DatasetIndex       # the index check_dataset --policy skip wrote
    index: Path
    model: Path
    cams: Path
    best: Path
    pseudo: Path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    """Make the defective folder, check it (stop, then skip) and run the CAM stages on what is left."""
    base = tmp_path_factory.mktemp("defective")
    clean_train = len(DEFECTS) + 3
    clean_root = make_toy_folder(base / "clean", NUM_CLASSES, num_train_aug=clean_train + 2,
                                 num_train=clean_train)
    root = base / "defective" / FOLDER_NAME
    shutil.copytree(clean_root, root)
    train_ids = _list_file(root, "train").read_text().split()
    ids = {name: d.apply(root, train_ids[k]) for k, (name, d) in enumerate(DEFECTS.items())}

    work = base / "results"
    raw, index, report = work / "index.json", work / "index.checked.json", work / "check_report.csv"
    model, cams, best, pseudo = work / "cam" / "model.pt", work / "cams.h5", work / "best.json", work / "pseudo"
    run_stage("prepare_dataset", "--kind", "folder", "--path", root, "--labels", "auto", "--index", raw,
              "--no-progress")
    stop = run_stage("check_dataset", "--index", raw, "--policy", "stop", "--report", report,
                     "--out-index", index, "--no-progress", expect_ok=False)
    with report.open(newline="", encoding="utf-8") as f:
        problems = list(csv.DictReader(f))
    assert not index.exists(), "check_dataset --policy stop wrote an index despite problems"
    run_stage("check_dataset", "--index", raw, "--policy", "skip", "--report", report, "--out-index", index,
              "--no-progress")
    run_stage("train_cam", *cam_train_args(index, model.parent, steps=2))
    run_stage("infer_cam", "--index", index, "--checkpoint", model, "--split", "train_aug", "--scales", 1.0, 0.5,
              "--flip", "--device", "cpu", "--out", cams)
    run_stage("eval_cam", "--index", index, "--cams", cams, "--split", "train", "--threshold-start", 0,
              "--threshold-stop", 0.6, "--threshold-step", 0.1, "--out-sweep", work / "sweep.csv",
              "--out-per-class", work / "per_class.csv", "--out-best", best)
    run_stage("pseudo_labels", "--index", index, "--cams", cams, "--split", "train_aug", "--threshold", "auto",
              "--best", best, "--ignore-band", 0.05, *CRF_FLAGS, "--workers", 2, "--out-dir", pseudo)
    return Pipeline(clean_root, root, ids, stop, problems, DatasetIndex.load(index), index, model, cams, best,
                    pseudo)


def test_stop_fails_and_points_to_the_full_report(pipeline: Pipeline) -> None:
    assert pipeline.stop.returncode == 2
    assert f"check_dataset: error: {len(pipeline.report)} problem(s) in data set" in pipeline.stop.stderr
    assert "full list: " in pipeline.stop.stderr and "check_report.csv" in pipeline.stop.stderr


@pytest.mark.parametrize("defect", BAD)
def test_defect_is_reported_and_skipped(pipeline: Pipeline, defect: str) -> None:
    image_id = pipeline.ids[defect]
    rows = [r for r in pipeline.report if r["id"] == image_id]
    assert rows, f"check_dataset did not report {defect} ({image_id})"
    assert any(DEFECTS[defect].problem in r["problem"] for r in rows), rows
    if DEFECTS[defect].names_file:
        assert any(image_id in r["file"] for r in rows), rows
    for split, split_ids in pipeline.checked.splits.items():
        assert image_id not in split_ids, f"{defect}: {image_id} still in {split} after skip"
    assert image_id not in pipeline.checked.labels


@pytest.mark.parametrize("defect", ACCEPTED)
def test_real_variant_goes_through_every_stage(pipeline: Pipeline, defect: str) -> None:
    image_id = pipeline.ids[defect]
    assert not [r for r in pipeline.report if r["id"] == image_id]
    assert image_id in pipeline.checked.ids("train") and image_id in pipeline.checked.ids("train_aug")
    with Image.open(_jpeg(pipeline.root, image_id)) as im:
        size = (im.height, im.width)
    with CamReader(pipeline.cams) as reader:
        entry = reader.read(image_id)
    assert entry.size == size
    assert entry.cams.shape[0] == len(pipeline.checked.labels[image_id])
    label = read_label(pipeline.pseudo / f"{image_id}.png")
    assert label.shape == size


def test_skip_run_covers_exactly_the_clean_images(pipeline: Pipeline) -> None:
    expected = pipeline.checked.ids("train_aug")
    with CamReader(pipeline.cams) as reader:
        assert sorted(reader.ids()) == sorted(expected)
    assert sorted(p.stem for p in pipeline.pseudo.glob("*.png")) == sorted(expected)
    assert json.loads(pipeline.best.read_text())["threshold"] >= 0


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_empty_image_list_stops_either_policy(pipeline: Pipeline, tmp_path: Path, policy: str) -> None:
    root = tmp_path / FOLDER_NAME
    shutil.copytree(pipeline.clean_root, root)
    _list_file(root, "val").write_text("")
    stage_main("prepare_dataset", ["--kind", "folder", "--path", root, "--labels", "auto",
                                   "--index", tmp_path / "index.json", "--no-progress"])
    message = stage_error("check_dataset", ["--index", tmp_path / "index.json", "--policy", policy,
                                            "--report", tmp_path / "report.csv",
                                            "--out-index", tmp_path / "checked.json", "--no-progress"])
    assert "val" in message and "empty" in message
    assert not (tmp_path / "checked.json").exists()


# ---------------------------------------------------------------------------------------------
# Stage inputs that do not belong together, and config values only a stage can judge


def stage_main(name: str, argv: list[object]) -> None:
    """A stage's ``main`` in this process: the same code path as ``python -m``, without the start-up."""
    importlib.import_module(f"stages.{name}").main([str(a) for a in argv])


def stage_error(name: str, argv: list[object]) -> str:
    """What a person reads when a stage stops on bad input, run as its ``__main__`` block runs it:
    one line ``<stage>: error: <message>`` before anything else of the error, no traceback, exit 2."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as info:
        errors.run_stage(lambda: stage_main(name, argv), name)
    lines = stderr.getvalue().splitlines()
    assert info.value.code == 2, f"stages.{name}: not reported as bad input:\n{stderr.getvalue()[-3000:]}"
    assert "Traceback" not in stderr.getvalue()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: error: "))  # after progress bars
    assert lines[-1] == f"({errors.DEBUG_VARIABLE}=1 shows the traceback)"
    return "\n".join(lines[first:-1])


@dataclass
class OtherDataSet:
    """A second toy set in a folder of the same name but with another class list, and its CAM run."""

    index: Path
    model: Path
    cams: Path


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> OtherDataSet:
    from stages.data.voc_folder import read_voc_folder

    base = tmp_path_factory.mktemp("other")
    root = make_toy_folder(base, num_classes=2, num_train_aug=4, num_train=2)
    index = base / "index.json"
    read_voc_folder(root, "auto").save(index)
    stage_main("train_cam", cam_train_args(index, base / "cam", steps=1))
    stage_main("infer_cam", ["--index", index, "--checkpoint", base / "cam" / "model.pt", "--split", "train_aug",
                             "--scales", 1.0, "--no-flip", "--device", "cpu", "--out", base / "cams.h5"])
    return OtherDataSet(index, base / "cam" / "model.pt", base / "cams.h5")


@dataclass(frozen=True)
class StageCase:
    """A stage run with one wrong input: what the error must name, the output it must not leave, and
    text it must not show (what a file it refused to read holds)."""

    stage: str
    argv: list[object]
    names: list[str]
    output: Path | None  # None: the stage writes no file (stages.inspect listing a file)
    hidden: tuple[str, ...] = ()


def _pseudo_label_args(p: Pipeline, cams: Path, out: Path, best: Path | None = None) -> list[object]:
    return ["--index", p.index, "--cams", cams, "--split", "train_aug", "--threshold", "auto",
            "--best", best or p.best, "--ignore-band", 0.05, *CRF_FLAGS, "--workers", 1, "--out-dir", out]


def _infer_args(p: Pipeline, model: Path, out: Path, device: str = "cpu") -> list[object]:
    return ["--index", p.index, "--checkpoint", model, "--split", "train_aug", "--scales", 1.0,
            "--no-flip", "--device", device, "--out", out]


def _eval_cam_args(p: Pipeline, tmp: Path, split: str = "train", start: float = 0.0,
                   index: Path | None = None) -> list[object]:
    return ["--index", index or p.index, "--cams", p.cams, "--split", split, "--threshold-start", start,
            "--threshold-stop", 0.5, "--threshold-step", 0.1, "--out-sweep", tmp / "sweep.csv",
            "--out-per-class", tmp / "per_class.csv", "--out-best", tmp / "best.json"]


def _seg_args(p: Pipeline, tmp: Path, pseudo: Path, options: dict | None = None,
              backbone: str = "resnet18", weights: str = "none") -> list[object]:
    return ["--index", p.index, "--split", "train_aug", "--method", "ce",
            "--method-options", json.dumps(options or {}), "--pseudo-labels", pseudo,
            "--backbone", backbone, "--weights", weights, "--decoder", "aspp", "--out", tmp / "seg.pt",
            "--checkpoint", tmp / "seg_ckpt.pt", "--metrics", tmp / "seg_metrics.csv", *train_flags(1)]


def _copy(src: Path, dst: Path, truncate: bool = False) -> Path:
    shutil.copy(src, dst)
    if truncate:
        _truncate(dst)
    return dst


def _pseudo_missing_ids(p: Pipeline, tmp: Path) -> tuple[Path, list[str]]:
    folder = tmp / "pseudo_partial"
    shutil.copytree(p.pseudo, folder)
    dropped = sorted(p.checked.ids("train_aug"))[:2]
    for image_id in dropped:
        (folder / f"{image_id}.png").unlink()
    return folder, dropped


def _case_foreign_cams(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("pseudo_labels", _pseudo_label_args(p, o.cams, tmp / "out"),
                     [str(o.cams), "made for data set"], tmp / "out")


def _case_truncated_cams(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    cams = _copy(p.cams, tmp / "cams.h5", truncate=True)
    return StageCase("pseudo_labels", _pseudo_label_args(p, cams, tmp / "out"), [str(cams), "truncated"],
                     tmp / "out")


def _case_unfinished_cams(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    cams = _copy(p.cams, tmp / ".cams.h5.tmp4242")
    return StageCase("pseudo_labels", _pseudo_label_args(p, cams, tmp / "out"),
                     [str(cams), "temporary file"], tmp / "out")


def _case_cams_of_another_split(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("eval_cam", _eval_cam_args(p, tmp, split="val"), [str(p.cams), "missing from the CAM file"],
                     tmp / "best.json")


def _case_unreadable_best_threshold(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    best = tmp / "best.json"
    best.write_text("{not json")
    return StageCase("pseudo_labels", _pseudo_label_args(p, p.cams, tmp / "out", best=best),
                     [str(best), "best threshold"], tmp / "out")


def _case_cam_model_other_classes(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("infer_cam", _infer_args(p, o.model, tmp / "cams.h5"), [str(o.model), "classes"],
                     tmp / "cams.h5")


def _case_truncated_cam_model(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    model = _copy(p.model, tmp / "model.pt", truncate=True)
    return StageCase("infer_cam", _infer_args(p, model, tmp / "cams.h5"), [str(model), "not a readable checkpoint"],
                     tmp / "cams.h5")


def _case_pseudo_labels_missing_ids(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    folder, dropped = _pseudo_missing_ids(p, tmp)
    return StageCase("train_seg", _seg_args(p, tmp, folder), [str(folder), *dropped], tmp / "seg.pt")


def _case_cam_model_as_segmenter(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("evaluate", ["--index", p.index, "--checkpoint", p.model, "--split", "val", "--scales", 1.0,
                                  "--no-flip", "--no-crf", "--panels", 0, "--out-metrics", tmp / "metrics.csv",
                                  "--out-per-class", tmp / "per_class.csv", "--out-predictions", tmp / "pred",
                                  "--out-panels", tmp / "panels", "--device", "cpu"],
                     [str(p.model)], tmp / "metrics.csv")


def _case_index_not_json(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    index = tmp / "index.json"
    index.write_text("{truncated")
    return StageCase("eval_cam", _eval_cam_args(p, tmp, index=index), [str(index), "cannot read"],
                     tmp / "best.json")


# config values a schema cannot judge: the stage the workflow hands them to must name them
def _case_unknown_backbone(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    args = cam_train_args(p.index, tmp, steps=1)
    args[args.index("--backbone") + 1] = "resnet_nope"
    return StageCase("train_cam", args, ["unknown backbone 'resnet_nope'"], tmp / "model.pt")


def _case_missing_weights_file(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    weights = tmp / "nowhere" / "resnet18.pth"
    return StageCase("train_seg", _seg_args(p, tmp, p.pseudo, weights=str(weights)), [str(weights), "not found"],
                     tmp / "seg.pt")


def _case_weights_for_another_backbone(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("train_seg", _seg_args(p, tmp, p.pseudo, weights="efficientnet_lite0_imagenet"),
                     ["efficientnet_lite0_imagenet", "resnet18"], tmp / "seg.pt")


def _case_unknown_variant_option(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("train_seg", _seg_args(p, tmp, p.pseudo, options={"lr_boost": 3}),
                     ["lr_boost", "'ce'"], tmp / "seg.pt")


def _case_unknown_split(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("eval_cam", _eval_cam_args(p, tmp, split="trian"), ["'trian'", "train_aug"], tmp / "best.json")


def _case_threshold_range_reversed(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    return StageCase("eval_cam", _eval_cam_args(p, tmp, start=0.9), ["start=0.9", "stop=0.5"], tmp / "best.json")


def _case_folder_does_not_exist(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    folder = tmp / "no" / "such" / "voc"
    return StageCase("prepare_dataset", ["--kind", "folder", "--path", folder, "--labels", "auto",
                                         "--index", tmp / "index.json", "--no-progress"],
                     [str(folder), "not a VOC-layout folder"], tmp / "index.json")


# data-set files prepare_dataset must refuse, in a copy of the clean folder
SECRET = "root:x:0:0:root:/root:/bin/bash"  # a first line that is no id: the id check would have echoed it


def _folder_copy(p: Pipeline, tmp: Path) -> Path:
    root = tmp / "data" / FOLDER_NAME
    shutil.copytree(p.clean_root, root)
    return root


def _prepare_folder(root: Path, tmp: Path, names: list[str], hidden: tuple[str, ...] = ()) -> StageCase:
    return StageCase("prepare_dataset", ["--kind", "folder", "--path", root, "--labels", "auto",
                                         "--index", tmp / "index.json", "--no-progress"],
                     names, tmp / "index.json", hidden)


def _linked_outside(relative: str) -> Callable[[Pipeline, OtherDataSet, Path], StageCase]:
    """The folder's file ``relative`` replaced by a link to a file outside that is no data at all."""
    def make(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
        root = _folder_copy(p, tmp)
        link, outside = root / relative, tmp / "outside" / Path(relative).name
        outside.parent.mkdir()
        outside.write_text(f"{SECRET}\n")
        link.unlink()
        link.symlink_to(outside)
        return _prepare_folder(root, tmp, [str(link), "follow_symlinks_outside"], hidden=(SECRET,))
    return make


def _encoded(relative: str, encoding: str, names: list[str], extra: str = "") -> Callable[..., StageCase]:
    """The folder's text file ``relative`` (with ``extra`` appended) saved in ``encoding``; ``names``
    may use {path} and {line}, the line of ``extra``."""
    def make(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
        root = _folder_copy(p, tmp)
        path = root / relative
        text = path.read_text(encoding="utf-8")
        path.write_bytes((text + extra).encode(encoding))
        line = text.count("\n") + 1
        return _prepare_folder(root, tmp, [n.format(path=path, line=line) for n in names])
    return make


def _case_id_with_zero_width_space(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    root = _folder_copy(p, tmp)
    path = _list_file(root, "val")
    first, second = path.read_text().split()[:2]
    path.write_text(f"{first}\n{second}\u200b\n", encoding="utf-8")  # looks like the file that is there
    return _prepare_folder(root, tmp, [f"{path}, line 2", repr(f"{second}\u200b"), "U+200B ZERO WIDTH SPACE"])


class _RunsCode:
    """A pickle payload: unpickling it calls ``os.mkdir(path)``. The cases below aim it at the
    stage's output, which the matrix checks is absent afterwards: the payload never ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.path),)


def _case_weights_that_would_run_code(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    weights = tmp / "resnet18.pth"
    torch.save({"conv1.weight": _RunsCode(tmp / "seg.pt")}, weights)
    return StageCase("train_seg", _seg_args(p, tmp, p.pseudo, weights=str(weights)),
                     [str(weights), "refused to load, for safety", "posix.mkdir"], tmp / "seg.pt")


def _case_cam_model_that_would_run_code(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    model = tmp / "model.pt"
    torch.save({"model": {}, "meta": _RunsCode(tmp / "cams.h5")}, model)
    return StageCase("infer_cam", _infer_args(p, model, tmp / "cams.h5"),
                     [str(model), "refused to load, for safety", "posix.mkdir"], tmp / "cams.h5")


def _case_pickle_named_safetensors(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    weights = tmp / "resnet18.safetensors"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    return StageCase("train_seg", _seg_args(p, tmp, p.pseudo, weights=str(weights)),
                     [str(weights), "a torch file named .safetensors: rename it to resnet18.pth"], tmp / "seg.pt")


def _case_truncated_weights(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    weights = tmp / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    _truncate(weights)
    return StageCase("train_seg", _seg_args(p, tmp, p.pseudo, weights=str(weights)),
                     [str(weights), "truncated or damaged", "get the file again"], tmp / "seg.pt")


def _case_checkpoint_and_previous_truncated(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    latest, previous = tmp / "checkpoint.pt", tmp / "checkpoint.prev.pt"
    for path in (latest, previous):
        _copy(p.model.parent / "checkpoint.pt", path, truncate=True)
    return StageCase("train_cam", cam_train_args(p.index, tmp, steps=2),
                     [str(latest), str(previous), f"delete them (rm {latest} {previous})"], tmp / "model.pt")


def _case_cuda_without_gpu(p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present, so device cuda is valid here")
    return StageCase("infer_cam", _infer_args(p, p.model, tmp / "cams.h5", device="cuda"),
                     ["'cuda'", "CUDA is not available"], tmp / "cams.h5")


# a CAM file whose entry is a link, a group, a string, a shape beyond its attributes, ... (tests/hostile_cams.py)
HOSTILE_CAM_RUNS: dict[str, Callable[[Pipeline, Path, Path], tuple[list[object], Path | None]]] = {
    "export_cams": lambda p, cams, tmp: (["--cams", cams, "--out-dir", tmp / "npy"], tmp / "npy"),
    "inspect": lambda p, cams, tmp: ([cams], None),
    "pseudo_labels": lambda p, cams, tmp: (_pseudo_label_args(p, cams, tmp / "out"), tmp / "out"),
}


def _case_hostile_cam_entry(stage: str, kind: str, p: Pipeline, o: OtherDataSet, tmp: Path) -> StageCase:
    cams = _copy(p.cams, tmp / "cams.h5")
    image_id = sorted(p.checked.ids("train_aug"))[0]
    make_hostile(cams, image_id, kind, other=o.cams)
    argv, output = HOSTILE_CAM_RUNS[stage](p, cams, tmp)
    return StageCase(stage, argv, [f"{cams}: CAM entry {image_id!r}", HOSTILE[kind]], output)


def _hostile_cam_cases(stages: list[str], kinds: list[str]) -> list:
    return [pytest.param(functools.partial(_case_hostile_cam_entry, stage, kind), id=f"{stage}:cam_entry_{kind}")
            for stage in stages for kind in kinds]


STAGE_CASES = [
    pytest.param(_case_foreign_cams, id="pseudo_labels:cam_file_of_another_data_set"),
    pytest.param(_case_truncated_cams, id="pseudo_labels:truncated_cam_file"),
    pytest.param(_case_unfinished_cams, id="pseudo_labels:cam_file_still_being_written"),
    pytest.param(_case_unreadable_best_threshold, id="pseudo_labels:unreadable_best_threshold"),
    pytest.param(_case_cams_of_another_split, id="eval_cam:cam_file_of_another_split"),
    pytest.param(_case_index_not_json, id="eval_cam:index_not_json"),
    pytest.param(_case_cam_model_other_classes, id="infer_cam:cam_model_for_other_classes"),
    pytest.param(_case_truncated_cam_model, id="infer_cam:truncated_cam_model"),
    pytest.param(_case_pseudo_labels_missing_ids, id="train_seg:pseudo_labels_missing_ids"),
    pytest.param(_case_cam_model_as_segmenter, id="evaluate:cam_model_given_as_segmenter"),
    pytest.param(_case_unknown_backbone, id="config:unknown_backbone"),
    pytest.param(_case_missing_weights_file, id="config:weights_file_does_not_exist"),
    pytest.param(_case_weights_for_another_backbone, id="config:weights_for_another_backbone"),
    pytest.param(_case_unknown_variant_option, id="config:unknown_variant_option"),
    pytest.param(_case_unknown_split, id="config:split_not_in_index"),
    pytest.param(_case_threshold_range_reversed, id="config:threshold_start_above_stop"),
    pytest.param(_case_folder_does_not_exist, id="config:folder_path_does_not_exist"),
    pytest.param(_linked_outside("ImageSets/Segmentation/train.txt"), id="prepare_dataset:split_list_linked_outside"),
    pytest.param(_linked_outside("image_labels.json"), id="prepare_dataset:image_labels_linked_outside"),
    pytest.param(_linked_outside("classes.txt"), id="prepare_dataset:class_list_linked_outside"),
    pytest.param(_encoded("ImageSets/Segmentation/train.txt", "utf-16", ["{path}: the split list is UTF-16 LE",
                                                                         "save it as UTF-8"]),
                 id="prepare_dataset:split_list_in_utf16"),
    pytest.param(_encoded("ImageSets/Segmentation/train.txt", "latin-1",
                          ["{path}: line {line} of the split list is not UTF-8 (byte 0xE4", "save it as UTF-8"],
                          extra="bäume\n"), id="prepare_dataset:split_list_in_latin1"),
    pytest.param(_encoded("image_labels.json", "utf-16-le", ["{path}: the image label file is UTF-16 or UTF-32 "
                                                             "without a byte-order mark"]),
                 id="prepare_dataset:image_labels_in_utf16_without_byte_order_mark"),
    pytest.param(_case_id_with_zero_width_space, id="prepare_dataset:id_with_zero_width_space"),
    pytest.param(_case_cuda_without_gpu, id="config:device_cuda_without_gpu"),
    *_hostile_cam_cases(["export_cams", "inspect"], list(HOSTILE)),
    *_hostile_cam_cases(["pseudo_labels"], ["external_link", "oversized_shape"]),
    pytest.param(_case_weights_that_would_run_code, id="train_seg:weights_pickle_that_would_run_code"),
    pytest.param(_case_pickle_named_safetensors, id="train_seg:weights_pickle_named_safetensors"),
    pytest.param(_case_truncated_weights, id="train_seg:truncated_weights_file"),
    pytest.param(_case_cam_model_that_would_run_code, id="infer_cam:cam_model_pickle_that_would_run_code"),
    pytest.param(_case_checkpoint_and_previous_truncated, id="train_cam:checkpoint_and_previous_truncated"),
]


@pytest.mark.parametrize("make_case", STAGE_CASES)
def test_stage_refuses_bad_input_naming_it(pipeline: Pipeline, other: OtherDataSet, tmp_path: Path,
                                           make_case: Callable[..., StageCase]) -> None:
    spec = make_case(pipeline, other, tmp_path)
    message = stage_error(spec.stage, spec.argv)
    for name in spec.names:
        assert name in message, f"stages.{spec.stage}: {name!r} not in the error:\n{message}"
    for text in spec.hidden:
        assert text not in message, f"stages.{spec.stage}: the error shows {text!r}:\n{message}"
    assert "weights_only" not in message, "torch's advice to load a file unsafely must not be relayed"
    assert spec.output is None or not spec.output.exists(), f"stages.{spec.stage} failed but left {spec.output}"


@pytest.mark.parametrize("size", BOMB_SIZES.values(), ids=BOMB_SIZES.keys())
def test_bomb_png_is_a_tiny_png_declaring_its_size(tmp_path: Path, monkeypatch, size: tuple[int, int]) -> None:
    """The crafted bomb is what it claims: a PNG of that size to PIL when the limit is lifted."""
    bomb_png(tmp_path / "bomb.png", *size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(tmp_path / "bomb.png") as im:
        assert im.format == "PNG" and im.size == size and im.mode == "L"
    assert (tmp_path / "bomb.png").stat().st_size < 200


@pytest.mark.parametrize("size", BOMB_SIZES.values(), ids=BOMB_SIZES.keys())
@pytest.mark.parametrize("read", [load_rgb, read_label, image_size], ids=["image", "label_png", "image_size"])
def test_decompression_bomb_is_bad_input_naming_the_file_wherever_opened(tmp_path: Path, read: Callable,
                                                                         size: tuple[int, int]) -> None:
    path = tmp_path / "bomb.png"
    bomb_png(path, *size)
    with pytest.raises(errors.InputError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: declared size {BOMB_PROBLEM} (Image size ({size[0] * size[1]} "
                                      f"pixels) exceeds limit")


def test_unreadable_masks_are_left_unlabelled_for_check_dataset(pipeline: Pipeline, tmp_path: Path) -> None:
    """Labels from masks: a mask that is a bomb or truncated gives its id no label (the stage goes
    on), and check_dataset reports both files, so skip can drop them."""
    root = _folder_copy(pipeline, tmp_path)
    bomb, cut, *rest = _list_file(root, "train").read_text().split()
    bomb_png(_mask(root, bomb), *BOMB_SIZES["beyond_twice_the_limit"])
    _truncate(_mask(root, cut))
    stage_main("prepare_dataset", ["--kind", "folder", "--path", root, "--labels", "masks",
                                   "--index", tmp_path / "index.json", "--no-progress"])
    index = DatasetIndex.load(tmp_path / "index.json")
    assert bomb not in index.labels and cut not in index.labels and all(i in index.labels for i in rest)
    files = {p.file: p.problem for p in check_index(index) if p.file}
    assert BOMB_PROBLEM in files[str(_mask(root, bomb))]
    assert "cannot read mask" in files[str(_mask(root, cut))]


def test_truncated_checkpoint_resumes_from_the_previous_one(pipeline: Pipeline, tmp_path: Path, capfd) -> None:
    """train_cam finds its latest checkpoint truncated: the log says so, and the previous one
    (kept beside it as checkpoint.prev.pt) is resumed."""
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    shutil.copy(pipeline.model.parent / "checkpoint.pt", previous)  # the pipeline's 2-step state
    _copy(pipeline.model.parent / "checkpoint.pt", latest, truncate=True)
    stage_main("train_cam", cam_train_args(pipeline.index, tmp_path, steps=2))
    log = capfd.readouterr().err
    assert f"{latest}: not a readable checkpoint, truncated or damaged" in log
    assert f"resuming from {previous} at step 2/2" in log
    assert (tmp_path / "model.pt").is_file() and not latest.exists()


# ---------------------------------------------------------------------------------------------
# A full disk while a stage writes: one line naming the file and what to do, nothing half-written

_ON_SMALL_DISK = """mnt=$1 size=$2; shift 2
mount -t tmpfs -o "size=$size" tmpfs "$mnt" || exit 99
"$@"; rc=$?
echo "left on the disk: $(ls -A "$mnt")"
exit $rc"""


def on_small_disk(folder: Path, size: str, *cmd: object) -> subprocess.CompletedProcess:
    """``cmd`` with a tmpfs of ``size`` mounted on ``folder``, in a mount namespace of its own
    (``unshare -rm``: no root needed, nothing to unmount); stdout ends with what it left there."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "-rm", "sh", "-c", _ON_SMALL_DISK, "sh", folder, size, *map(str, cmd)],
                          cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_disks(tmp_path_factory) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    probe = on_small_disk(tmp_path_factory.mktemp("probe"), "64k", "true")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")


FULL_DISK_WRITES = {  # what is written -> (stage, tmpfs size, its arguments, the output it fails on)
    "torch_checkpoint": ("train_cam", "1m", lambda p, d: cam_train_args(p.index, d, steps=1), "checkpoint.pt"),
    "hdf5_cam_file": ("infer_cam", "16k", lambda p, d: _infer_args(p, p.model, d / "cams.h5"), "cams.h5"),
    "label_pngs": ("pseudo_labels", "32k", lambda p, d: _pseudo_label_args(p, p.cams, d / "pseudo"), "pseudo"),
}


@pytest.mark.parametrize("write", FULL_DISK_WRITES)
def test_full_disk_is_one_line_naming_the_file(pipeline: Pipeline, small_disks: None, tmp_path: Path,
                                               write: str) -> None:
    stage, size, make_args, output = FULL_DISK_WRITES[write]
    disk = tmp_path / "disk"
    proc = on_small_disk(disk, size, sys.executable, "-m", f"stages.{stage}", *make_args(pipeline, disk))
    assert proc.returncode == 2, proc.stderr[-3000:]
    first = next(line for line in proc.stderr.splitlines() if line.startswith(f"{stage}: error: "))
    assert first == (f"{stage}: error: {disk / output}: no space left on the device while writing it; "
                     f"free space (df -h {disk}) and rerun")
    assert "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[-1] == "left on the disk: ", "a half-written file was left behind"


# ---------------------------------------------------------------------------------------------
# Configuration mistakes: Snakemake refuses them before any job runs

# Every schema mistake at once: the user gets them all in one message, one line each.
SCHEMA_MISTAKES = dict(
    cam={"train": {"stpes": 5, "scale_range": [0.5]}, "eval": {"threshold_step": 0}},
    segmenter={"backbone": "resnet18"},
    seg={"decoder": "unet", "train": {"batch_size": "eight", "lr": float("nan")}},
    pseudo_labels={"threshold": 1.5, "ignore_band": -0.1, "crf": {"bilateral_srgb": float("inf")}},
    evaluation={"scales": []},
    refinements={"none": {"method": "none"}, "magic": {"method": "magic"}, "gt": {"method": "none"}},
    variants={"ce-2": {"method": "ce", "pseudo_labels": "none"},
              "ce3": {"method": "ce", "pseudo_labels": "none", "lr": 0.1}},
    dataset={"kind": "imagenet", "voc": {"archives": {"voc2012_trainval": {"url": "x", "md5": "abc"}}}},
)
SCHEMA_CASES = {
    "unknown_key": "cam.train: Additional properties are not allowed ('stpes' was unexpected)",
    "unknown_section": "<top level>: Additional properties are not allowed ('segmenter' was unexpected)",
    "wrong_type": "seg.train.batch_size: 'eight' is not of type 'integer'",
    "bad_enum": "seg.decoder: 'unet' is not one of ['aspp', 'mlp', 'sfpnext']",
    "bad_dataset_kind": "dataset.kind: 'imagenet' is not one of",
    "threshold_out_of_range": "pseudo_labels.threshold: 1.5 is not valid",
    "negative_ignore_band": "pseudo_labels.ignore_band: -0.1 is less than the minimum of 0",
    "zero_threshold_step": "cam.eval.threshold_step: 0 is less than or equal to the minimum of 0",
    "scale_range_not_a_pair": "cam.train.scale_range: [0.5] is too short",
    "no_evaluation_scale": "evaluation.scales: [] should be non-empty",
    "unknown_refinement_method": "refinements.magic.method: 'magic' is not one of ['none', 'plmix', 'imported', 'irn']",
    "bad_variant_name": "variants: 'ce-2' does not match",
    "unknown_method_option": "variants.ce3: Additional properties are not allowed ('lr' was unexpected)",
    "bad_md5": "dataset.voc.archives.voc2012_trainval.md5: 'abc' does not match",
    "refinement_named_gt": "refinements: 'gt' should not be valid",
    # YAML's .nan and .inf: every bound of the schema compares false with NaN
    "nan_learning_rate": "seg.train.lr: nan is not a finite number",
    "infinite_crf_parameter": "pseudo_labels.crf.bilateral_srgb: inf is not a finite number",
}
# Mistakes the workflow finds after the schema passes: one run each, since the first one stops it.
WORKFLOW_MISTAKES = {
    "unknown_method": (dict(variants={"mine": {"method": "magic", "pseudo_labels": "none"}}),
                       "variants.mine.method: 'magic' is not one of ['ce', "),
    "variant_reads_missing_refinement": (dict(variants={"ce2": {"method": "ce", "pseudo_labels": "other"}}),
                                         "variants.ce2.pseudo_labels: 'other' is neither gt nor one of refinements"),
    # ground truth in training: refused unless the name marks the row, so no output hides it
    "gt_labels_not_named_oracle": (dict(variants={"ce_gt": {"method": "ce", "pseudo_labels": "gt"}}),
                                   "variants.ce_gt: pseudo_labels: gt trains on the ground-truth masks (an "
                                   "ORACLE row); put ORACLE in the variant's name"),
    "oracle_pool_not_named_oracle": (
        dict(variants={"ugrl_o": {"method": "ugrl", "pseudo_labels": "none", "pool": "oracle"}}),
        "variants.ugrl_o: pool: oracle ranks the pool by the ground-truth masks (an ORACLE row)"),
    "variant_without_pseudo_labels": (dict(variants={"ce2": {"method": "ce"}}),
                                      "variants.ce2: 'pseudo_labels' is a required property"),
    "folder_not_there": (dict(dataset={"kind": "folder", "folder": {"path": "no/such/folder"}}),
                         "dataset.folder.path: 'no/such/folder' is not a directory"),
    "devkit_not_there": (dict(dataset={"kind": "voc", "voc": {"devkit": "no/VOC2012"}}),
                         "dataset.voc.devkit: 'no/VOC2012' is not a directory"),
    # every weights key, before any job (a stage would find out only once its job starts)
    "cam_weights_not_there": (dict(cam={"weights": "no/resnet18.pth"}),
                              "cam.weights: 'no/resnet18.pth' is neither one of ['none', "),
    "seg_weights_not_there": (dict(seg={"weights": "no/seg.pth"}), "seg.weights: 'no/seg.pth' is neither"),
    "variant_weights_not_there": (
        dict(variants={"ce": {"method": "ce", "pseudo_labels": "none", "seg": {"weights": "no/v.pth"}}}),
        "variants.ce.seg.weights: 'no/v.pth' is neither"),
    "imported_folder_not_there": (
        dict(refinements={"none": {"method": "none"},
                          "theirs": {"method": "imported", "path": "no/cams", "format": "irn"}}),
        "refinements.theirs.path: 'no/cams' is not a directory"),
}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """``snakemake -n`` on each bad config, run side by side (each is mostly interpreter start-up)."""
    configs = {"schema": SCHEMA_MISTAKES, **{k: v[0] for k, v in WORKFLOW_MISTAKES.items()}}

    def dry_run(name: str) -> tuple[str, subprocess.CompletedProcess]:
        workdir = tmp_path_factory.mktemp(f"config_{name}")
        if name == "yaml_syntax":
            config = workdir / "config.yaml"
            config.write_text("cam:\n  train: {steps: 3\n  backbone: resnet18\n")
        else:
            config = write_config(workdir / "config.yaml", **configs[name])
        return name, snakemake(workdir, "-n", "--cores", "1", config=config, check=False)

    tmp_path_factory.getbasetemp()  # made once here: the threads below would race to create it
    with ThreadPoolExecutor(max_workers=len(configs) + 1) as pool:
        return dict(pool.map(dry_run, [*configs, "yaml_syntax"]))


def _refused(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, "a bad config must stop the run"
    assert "Job stats" not in proc.stdout, "jobs were planned for a bad config"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_schema_mistake_names_key(dry_runs: dict, case: str) -> None:
    assert SCHEMA_CASES[case] in _refused(dry_runs["schema"])


@pytest.mark.parametrize("case", WORKFLOW_MISTAKES)
def test_workflow_mistake_names_variant(dry_runs: dict, case: str) -> None:
    assert WORKFLOW_MISTAKES[case][1] in _refused(dry_runs[case])


def test_config_that_is_not_yaml_stops_before_any_job(dry_runs: dict) -> None:
    # Snakemake parses --configfile itself and names neither the file nor the line.
    assert "Config file is not valid JSON or YAML" in _refused(dry_runs["yaml_syntax"])
