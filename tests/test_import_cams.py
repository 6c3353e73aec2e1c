"""Importing other methods' CAMs: each format read back as written, every bad file refused by name,
pickles that would run code refused before anything runs, the export round trip, one workflow run."""
from __future__ import annotations

import builtins
import io
import os
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from snakemake.utils import validate

from conftest import REPO, snakemake, write_config
from stages import export_cams, import_cams
from stages.cams.foreign import image_size
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.errors import InputError, MissingEntryError
from stages.io.cam_store import CamFileMeta, CamReader, CamWriter
from stages.io.label_png import read_label

SPLIT = "train_aug"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, DatasetIndex]:
    root = tmp_path_factory.mktemp("toy")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=4, num_train=2, num_val=2,
                         min_size=24, max_size=40, seed=0)
    index.save(root / "index.json")
    return root / "index.json", index


@pytest.fixture(scope="module")
def truth(toy) -> dict[str, dict[int, np.ndarray]]:
    """Maps of every labelled class at image size, in steps of 1/255 so that PNGs hold them exactly."""
    _, index = toy
    rng = np.random.default_rng(0)
    return {i: {c: rng.integers(0, 256, image_size(index.image_path(i))).astype(np.float32) / 255
                for c in index.labels[i]} for i in index.ids(SPLIT)}


def save_pickle(path: Path, obj: object) -> None:
    np.save(path, obj, allow_pickle=True)  # what IRN and SEAM do


def write_foreign(fmt: str, folder: Path, index: DatasetIndex, truth: dict) -> None:
    """``truth`` in format ``fmt``, with class numbers counted from the first foreground class."""
    folder.mkdir()
    for n, (image_id, maps) in enumerate(truth.items()):
        present = sorted(maps)
        stack = np.stack([maps[c] for c in present])
        if fmt == "irn":  # as IRN's make_cam writes it: keys and the strided maps are torch tensors
            save_pickle(folder / f"{image_id}.npy", {"keys": torch.tensor(present) - 1, "high_res": stack,
                                                     "cam": torch.from_numpy(stack[:, ::4, ::4].copy())})
        elif fmt == "seam":
            save_pickle(folder / f"{image_id}.npy", {c - 1: maps[c] for c in present})
        elif fmt == "png":  # both namings, class names and numbers
            for c in present:
                if n % 2:
                    (folder / image_id).mkdir(exist_ok=True)
                    path = folder / image_id / f"{c - 1}.png"
                else:
                    path = folder / f"{image_id}_{index.classes[c]}.png"
                Image.fromarray(np.round(maps[c] * 255).astype(np.uint8), mode="L").save(path)
        else:  # every class, background first: its channel and those of absent classes are dropped
            array = np.full((*stack.shape[1:], len(index.classes)), 0.5, np.float32)
            array[:, :, present] = stack.transpose(1, 2, 0)
            if n % 2:
                np.savez(folder / f"{image_id}.npz", cams=array)
            else:
                np.save(folder / f"{image_id}.npy", array)


def run_import(index_path: Path, folder: Path, fmt: str, out: Path, *extra: str) -> None:
    import_cams.main(["--index", str(index_path), "--split", SPLIT, "--path", str(folder), "--format", fmt,
                      "--class-numbering", "foreground", "--no-normalize", "--no-resize", "--backbone", "irn-r50",
                      "--made-by", "a test", *extra, "--out", str(out)])


def assert_imported(out: Path, index: DatasetIndex, truth: dict) -> None:
    with CamReader(out) as reader:
        reader.check_matches(index, index.ids(SPLIT))
        assert len(reader) == len(truth)
        for image_id, maps in truth.items():
            entry = reader.read(image_id)
            assert entry.class_indices.tolist() == sorted(maps)
            np.testing.assert_allclose(entry.cams, np.stack([maps[c] for c in sorted(maps)]), atol=1e-3)


@pytest.mark.parametrize("fmt", ["irn", "seam", "png", "array"])
def test_each_format_imports_what_was_written(tmp_path, toy, truth, fmt):
    index_path, index = toy
    write_foreign(fmt, tmp_path / fmt, index, truth)
    extra = ["--classes", *index.classes] if fmt == "array" else []
    run_import(index_path, tmp_path / fmt, fmt, tmp_path / "cams.h5", *extra)
    assert_imported(tmp_path / "cams.h5", index, truth)
    with CamReader(tmp_path / "cams.h5") as reader:
        assert reader.meta.source == f"import_cams:{fmt}:{(tmp_path / fmt).resolve()}"
        assert reader.meta.backbone == "irn-r50" and '"made_by": "a test"' in reader.meta.refinement


@pytest.fixture
def seam(tmp_path, toy, truth) -> tuple[Path, Path, str]:
    """Good SEAM-style CAMs: (index, folder, the first image id)."""
    index_path, index = toy
    write_foreign("seam", tmp_path / "seam", index, truth)
    return index_path, tmp_path / "seam", next(iter(truth))


def rewrite(folder: Path, image_id: str, change) -> Path:
    """Give one image's SEAM dictionary ``change(dict)``; returns its file."""
    path = folder / f"{image_id}.npy"
    save_pickle(path, change(np.load(path, allow_pickle=True).item()))  # our own file, written above
    return path


def refused(index_path: Path, folder: Path, out: Path, fmt: str = "seam", *extra: str,
            error: type[Exception] = InputError) -> str:
    with pytest.raises(error) as info:
        run_import(index_path, folder, fmt, out, *extra)
    assert not out.exists()
    return str(info.value)


def test_a_map_of_another_size_is_refused_unless_resized(tmp_path, seam, toy, truth):
    index_path, folder, image_id = seam
    path = rewrite(folder, image_id, lambda d: {k: np.pad(v, ((0, 3), (0, 0))) for k, v in d.items()})
    message = refused(index_path, folder, tmp_path / "cams.h5")
    assert str(path) in message and "resize: true" in message
    run_import(index_path, folder, "seam", tmp_path / "cams.h5", "--resize")
    with CamReader(tmp_path / "cams.h5") as reader:
        assert reader.read(image_id).size == image_size(toy[1].image_path(image_id))


def test_an_unknown_class_is_refused_naming_the_file(tmp_path, seam, toy, truth):
    index_path, folder, image_id = seam
    path = rewrite(folder, image_id, lambda d: {**d, 7: next(iter(d.values()))})
    assert str(path) in refused(index_path, folder, tmp_path / "cams.h5")
    write_foreign("png", tmp_path / "png", toy[1], truth)
    bad = tmp_path / "png" / f"{image_id}_zebra.png"
    Image.new("L", (4, 4)).save(bad)
    assert str(bad) in refused(index_path, tmp_path / "png", tmp_path / "cams.h5", "png")


def test_a_labelled_class_without_a_map_is_refused_naming_the_file(tmp_path, seam):
    index_path, folder, image_id = seam
    path = rewrite(folder, image_id, lambda d: dict(list(d.items())[1:]))
    assert str(path) in refused(index_path, folder, tmp_path / "cams.h5")


def test_missing_images_are_listed(tmp_path, seam, truth):
    index_path, folder, _ = seam
    gone = list(truth)[1:3]
    for image_id in gone:
        (folder / f"{image_id}.npy").unlink()
    message = refused(index_path, folder, tmp_path / "cams.h5", error=MissingEntryError)
    assert str(folder) in message and all(i in message for i in gone)


def test_maps_beyond_0_1_are_refused_unless_normalized(tmp_path, seam, toy, truth):
    index_path, folder, image_id = seam
    path = rewrite(folder, image_id, lambda d: {k: 40 * v for k, v in d.items()})
    message = refused(index_path, folder, tmp_path / "cams.h5")
    assert str(path) in message and "normalize: true" in message
    run_import(index_path, folder, "seam", tmp_path / "cams.h5", "--normalize")
    with CamReader(tmp_path / "cams.h5") as reader:
        assert np.allclose(reader.read(image_id).cams.max(axis=(1, 2)), 1)


class RunsCode:
    """A pickle that calls ``function(argument)`` when loaded, as a hostile CAM file would."""

    def __init__(self, function, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function, refused_global", [(os.system, f"{os.name}.system"),
                                                      (builtins.exec, "builtins.exec")])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, seam, function, refused_global):
    index_path, folder, image_id = seam

    def payload(marker: Path) -> str:
        return f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w').close()"

    # the payload is live: numpy's own loader with allow_pickle=True runs it
    save_pickle(tmp_path / "live.npy", {0: RunsCode(function, payload(tmp_path / "ran_under_numpy"))})
    np.load(tmp_path / "live.npy", allow_pickle=True)
    assert (tmp_path / "ran_under_numpy").exists()

    marker = tmp_path / "ran_under_import"
    path = rewrite(folder, image_id, lambda d: {**d, 0: RunsCode(function, payload(marker))})
    message = refused(index_path, folder, tmp_path / "cams.h5")
    assert str(path) in message and refused_global in message
    assert not marker.exists()


class TensorBytes:
    """What a pickled tensor's storage is: bytes for ``torch.storage._load_from_bytes``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


def test_tensor_bytes_that_would_run_code_are_refused_and_nothing_runs(tmp_path, toy, truth):
    """IRN's tensors are rebuilt through torch's weights-only loader, not torch's own pickle helper."""
    index_path, index = toy

    def hostile(marker: Path) -> bytes:
        data = io.BytesIO()
        torch.save(RunsCode(os.system, f"touch {marker}"), data, _use_new_zipfile_serialization=False)
        return data.getvalue()

    torch.storage._load_from_bytes(hostile(tmp_path / "ran_under_torch"))  # the payload is live
    assert (tmp_path / "ran_under_torch").exists()

    write_foreign("irn", tmp_path / "irn", index, truth)
    image_id = next(iter(truth))
    path = tmp_path / "irn" / f"{image_id}.npy"
    d = np.load(path, allow_pickle=True).item()  # our own file, written above
    save_pickle(path, {**d, "keys": TensorBytes(hostile(tmp_path / "ran_under_import"))})
    message = refused(index_path, tmp_path / "irn", tmp_path / "cams.h5", "irn")
    assert str(path) in message and f"{os.name}.system" in message
    assert not (tmp_path / "ran_under_import").exists()


def test_export_writes_plain_arrays_that_import_back_unchanged(tmp_path, toy, truth):
    index_path, index = toy
    meta = CamFileMeta(dataset=index.name, split=SPLIT, classes=tuple(index.classes), backbone="resnet18",
                       scales=(1.0,), flip=True, checkpoint_sha256="0123")
    with CamWriter(tmp_path / "ours.h5", meta) as writer:
        for image_id, maps in truth.items():
            writer.write(image_id, np.stack([maps[c] for c in sorted(maps)]), sorted(maps))
    export_cams.main(["--cams", str(tmp_path / "ours.h5"), "--out-dir", str(tmp_path / "exported")])
    assert (tmp_path / "exported" / "classes.txt").read_text().split() == index.classes[1:]
    for image_id in truth:
        array = np.load(tmp_path / "exported" / f"{image_id}.npy", allow_pickle=False)
        assert array.shape == (*image_size(index.image_path(image_id)), len(index.classes) - 1)
    run_import(index_path, tmp_path / "exported", "array", tmp_path / "back.h5")
    with CamReader(tmp_path / "ours.h5") as ours, CamReader(tmp_path / "back.h5") as back:
        for image_id in truth:
            a, b = ours.read(image_id), back.read(image_id)
            np.testing.assert_array_equal(a.class_indices, b.class_indices)
            np.testing.assert_array_equal(a.cams, b.cams)


def imported_config(path: Path, foreign: Path, **overrides) -> Path:
    """The tiny config with imported (SEAM-style) CAMs as its only refinement and one `ce` variant on them."""
    cfg = write_config(path, **overrides)
    config = yaml.safe_load(cfg.read_text())
    config["refinements"] = {"theirs": {"method": "imported", "path": str(foreign), "format": "seam"}}
    config["variants"] = {"ce_theirs": {"method": "ce", "pseudo_labels": "theirs"}}
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return cfg


def test_schema_fills_defaults_and_names_mistakes_of_an_imported_refinement(tmp_path):
    schema_path = REPO / "workflow" / "schemas" / "config.schema.yaml"
    config = yaml.safe_load(imported_config(tmp_path / "config.yaml", tmp_path).read_text())
    validate(config, str(schema_path))
    theirs = config["refinements"]["theirs"]
    assert theirs["class_numbering"] == "foreground" and theirs["backbone"] == "unknown"
    assert not theirs["normalize"] and not theirs["resize"]
    validator = jsonschema.Draft202012Validator(yaml.safe_load(schema_path.read_text()))
    for theirs, named in [({"path": "x", "formt": "png"}, "formt"), ({"path": "x", "format": "jpeg"}, "jpeg"),
                          ({"format": "png"}, "'path' is a required property")]:
        messages = [e.message for e in validator.iter_errors({"refinements": {"t": {"method": "imported", **theirs}}})]
        assert any(named in m for m in messages), messages


@pytest.mark.workflow
def test_imported_cams_run_pseudo_labels_and_a_variant_end_to_end(tmp_path):
    """The tiny config cut down to imported CAMs and one `ce` variant on them (the raw CAMs are still
    trained and swept: the summary compares every CAM file with them)."""
    foreign = tmp_path / "foreign"
    train = {"crop_size": 48, "batch_size": 4, "steps": 1}
    cfg = imported_config(tmp_path / "config.yaml", foreign,
                          dataset={"toy": {"num_classes": 3, "num_train_aug": 8, "num_train": 4, "num_val": 4,
                                           "min_size": 48, "max_size": 56}},
                          cam={"train": train, "infer": {"scales": [1.0], "flip": False}}, seg={"train": train},
                          pseudo_labels={"crf": {"iterations": 1}},
                          evaluation={"scales": [1.0], "flip": False, "panels": 1})

    foreign.mkdir()  # empty while the dataset rules run: the ids are known only then
    snakemake(tmp_path, "--cores", "2", "results/dataset/index.checked.json", config=cfg)
    index = DatasetIndex.load(tmp_path / "results/dataset/index.checked.json")
    for image_id in index.ids(SPLIT):  # good CAMs: the objects' masks, softened
        mask = read_label(index.mask_path(image_id, SPLIT))
        save_pickle(foreign / f"{image_id}.npy",
                    {c - 1: np.where(mask == c, 0.9, 0.1).astype(np.float32) for c in index.labels[image_id]})
    snakemake(tmp_path, "--cores", "2", "results/summary/summary.md", config=cfg)

    results = tmp_path / "results"
    assert len(list((results / "pseudo_labels/theirs" / SPLIT).glob("*.png"))) == len(index.ids(SPLIT))
    assert pd.read_csv(results / "eval/ce_theirs/metrics.csv")["miou"].between(0, 1).all()
    table = pd.read_csv(results / "summary/summary.csv").set_index(["stage", "name"])
    # the CAMs were the masks: their sweep and pseudo labels show it, so they went through unchanged
    assert table.loc[("cam", "theirs"), "miou"] > 0.9 and table.loc[("pseudo_labels", "theirs"), "miou"] > 0.9
    assert ("segmentation", "ce_theirs") in table.index and ("import_cams", "theirs-train_aug") in table.index
    assert set(table.loc["infer_cam"].index) == {"cam-train_aug"}  # imported, not inferred
