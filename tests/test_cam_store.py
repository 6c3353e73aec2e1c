"""The HDF5 CAM store: round trip, layout, atomic writes, and refusal of wrong or broken files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_cams import HOSTILE, damaged_copies, make_hostile

from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.cam_store import CamFileMeta, CamReader, CamWriter, merge_shards, shard_path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("background", "cat", "dog", "person")


def make_meta(**changes) -> CamFileMeta:
    fields = dict(dataset="tiny", split="train", classes=CLASSES, backbone="resnet18",
                  scales=(1.0, 0.5), flip=True, checkpoint_sha256="0123abcd")
    fields.update(changes)
    return CamFileMeta(**fields)


def make_entries(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[int]]]:
    return {
        "img_a": (rng.random((2, 12, 16), dtype=np.float32), [1, 3]),
        "img_b": (rng.random((1, 20, 9), dtype=np.float32), [2]),
        "img_c": (rng.random((3, 7, 7), dtype=np.float32), [1, 2, 3]),
    }


def write_file(path: Path, entries: dict, meta: CamFileMeta | None = None) -> None:
    with CamWriter(path, meta or make_meta()) as writer:
        for image_id, (cams, classes) in entries.items():
            writer.write(image_id, cams, classes)


def tiny_index(classes=CLASSES, name="tiny", ids=("img_a", "img_b", "img_c")) -> DatasetIndex:
    return DatasetIndex(name=name, root=Path("/nonexistent"), classes=list(classes),
                        splits={"train": list(ids)}, labels={i: [1] for i in ids})


def test_round_trip_values_attrs_and_layout(tmp_path):
    entries = make_entries(np.random.default_rng(0))
    path = tmp_path / "cams.h5"
    write_file(path, entries)
    with CamReader(path) as reader:
        assert reader.meta == make_meta()
        assert sorted(reader.ids()) == sorted(entries) and len(reader) == 3
        for image_id, (cams, classes) in entries.items():
            entry = reader.read(image_id)
            assert entry.cams.dtype == np.float32 and entry.cams.shape == cams.shape
            np.testing.assert_allclose(entry.cams, cams, atol=0.5 / 255 + 1e-6)  # 8-bit levels in [0, 1]
            assert entry.class_indices.tolist() == classes
            assert entry.size == cams.shape[1:]
    with h5py.File(path, "r") as f:  # the documented layout, read with plain h5py
        assert f.attrs["format_version"] == 2 and f.attrs["num_images"] == 3
        assert list(f.attrs["classes"]) == list(CLASSES)
        ds = f["cams/img_a"]
        assert ds.dtype == np.uint8 and ds.chunks is None and ds.compression is None  # one contiguous read
        np.testing.assert_allclose(ds[()] / 255, entries["img_a"][0], atol=0.5 / 255 + 1e-6)
        assert (ds.attrs["height"], ds.attrs["width"]) == (12, 16)


def test_entries_are_read_lazily(tmp_path):
    path = tmp_path / "cams.h5"
    write_file(path, make_entries(np.random.default_rng(1)))
    with CamReader(path) as reader:
        stream = reader.entries()
        assert isinstance(stream, types.GeneratorType)
        first_id, first = next(stream)
        assert first_id == reader.ids()[0] and first.cams.ndim == 3
        assert [i for i, _ in reader.entries(["img_c", "img_a"])] == ["img_c", "img_a"]


def test_reads_stay_correct_across_reopens(tmp_path, monkeypatch):
    """The reader reopens the file every few reads to free libhdf5's per-entry metadata."""
    monkeypatch.setattr(CamReader, "REOPEN_EVERY", 2)
    entries = make_entries(np.random.default_rng(2))
    path = tmp_path / "cams.h5"
    write_file(path, entries)
    with CamReader(path) as reader:
        for _ in range(3):  # 9 reads, 4 reopens
            for image_id, entry in reader.entries(["img_a", "img_b", "img_c"]):
                np.testing.assert_allclose(entry.cams, entries[image_id][0], atol=0.5 / 255 + 1e-6)
        assert len(reader) == 3 and "img_b" in reader


def test_image_without_foreground_class(tmp_path):
    path = tmp_path / "cams.h5"
    write_file(path, {"empty": (np.zeros((0, 5, 6), np.float32), [])})
    with CamReader(path) as reader:
        entry = reader.read("empty")
        assert entry.cams.shape == (0, 5, 6) and entry.class_indices.size == 0


def test_writer_rejects_bad_entries(tmp_path):
    with pytest.raises(ValueError, match="do not match"):
        with CamWriter(tmp_path / "x.h5", make_meta()) as writer:
            writer.write("a", np.zeros((2, 4, 4)), [1])
    with pytest.raises(ValueError, match="outside"):
        with CamWriter(tmp_path / "x.h5", make_meta()) as writer:
            writer.write("a", np.zeros((1, 4, 4)), [4])
    with pytest.raises(ValueError, match="written twice"):
        with CamWriter(tmp_path / "x.h5", make_meta()) as writer:
            writer.write("a", np.zeros((1, 4, 4)), [1])
            writer.write("a", np.zeros((1, 4, 4)), [1])
    assert list(tmp_path.iterdir()) == []  # every failed write left nothing behind


def test_exception_leaves_no_output(tmp_path):
    path = tmp_path / "cams.h5"
    with pytest.raises(RuntimeError):
        with CamWriter(path, make_meta()) as writer:
            writer.write("img_a", np.zeros((1, 4, 4)), [1])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_a_temp_file_never_read_and_removed_by_the_next_write(tmp_path):
    path = tmp_path / "cams.h5"
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from stages.io.cam_store import CamFileMeta, CamWriter
        meta = CamFileMeta("tiny", "train", {CLASSES!r}, "resnet18", (1.0,), True, "x")
        with CamWriter({str(path)!r}, meta) as writer:
            writer.write("img_a", np.ones((1, 8, 8)), [1])
            writer._file.flush()
            print("written", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not path.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".cams.h5.tmp")
    with pytest.raises(ValueError, match="temporary"):
        CamReader(leftovers[0])
    write_file(path, make_entries(np.random.default_rng(1)))  # the next run cleans up after the kill
    assert [p.name for p in tmp_path.iterdir()] == ["cams.h5"]


def test_unfinished_file_is_refused(tmp_path):
    path = tmp_path / "cams.h5"
    write_file(path, make_entries(np.random.default_rng(2)))
    with h5py.File(path, "a") as f:
        del f.attrs["num_images"]
    with pytest.raises(ValueError, match=f"{path}.*never finished"):
        CamReader(path)


def test_truncated_file_error_names_the_file(tmp_path):
    path = tmp_path / "cams.h5"
    write_file(path, make_entries(np.random.default_rng(3)))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=str(path)):
        with CamReader(path) as reader:
            for _ in reader.entries():
                pass


def test_other_data_set_or_class_list_is_refused(tmp_path):
    path = tmp_path / "cams.h5"
    write_file(path, make_entries(np.random.default_rng(4)))
    with CamReader(path) as reader:
        reader.check_matches(tiny_index(), ["img_a"])
        with pytest.raises(ValueError, match=f"{path}.*classes"):
            reader.check_matches(tiny_index(classes=("background", "cat", "dog", "horse")))
        with pytest.raises(ValueError, match=f"{path}.*'other'"):
            reader.check_matches(tiny_index(name="other"))


def test_missing_image_id_names_file_and_id(tmp_path):
    path = tmp_path / "cams.h5"
    write_file(path, make_entries(np.random.default_rng(5)))
    with CamReader(path) as reader:
        with pytest.raises(KeyError, match="img_zzz"):
            reader.check_matches(tiny_index(ids=("img_a", "img_zzz")), ["img_a", "img_zzz"])
        with pytest.raises(KeyError, match=f"{path}.*img_zzz"):
            reader.read("img_zzz")


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "cams.h5"
    path.write_text("hello")
    with pytest.raises(ValueError, match=str(path)):
        CamReader(path)


def test_merge_shards(tmp_path):
    entries = make_entries(np.random.default_rng(6))
    out = tmp_path / "cams.h5"
    shards = [shard_path(out, r) for r in range(2)]
    ids = list(entries)
    write_file(shards[0], {i: entries[i] for i in ids[:2]})
    write_file(shards[1], {i: entries[i] for i in ids[2:]})
    merge_shards(shards, out, make_meta())
    assert not any(s.exists() for s in shards)
    with CamReader(out) as reader:
        assert sorted(reader.ids()) == sorted(ids)
        for image_id, entry in reader.entries():
            np.testing.assert_allclose(entry.cams, entries[image_id][0], atol=0.5 / 255 + 1e-6)
    with h5py.File(out, "r") as f:
        assert f["cams/img_c"].dtype == np.uint8  # copied as stored


def test_format_1_files_are_still_read(tmp_path):
    """Caches written before the 8-bit format (float16, gzip) stay usable without recomputing."""
    cams = np.random.default_rng(5).random((2, 6, 8), dtype=np.float32)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({**make_meta().to_attrs(), "format_version": 1, "num_images": 1})
        ds = f.create_group("cams").create_dataset("img_a", data=cams.astype(np.float16), chunks=cams.shape,
                                                   compression="gzip", shuffle=True)
        ds.attrs["class_indices"] = np.array([1, 3], np.int16)
        ds.attrs["height"], ds.attrs["width"] = cams.shape[1:]  # as every version wrote them
    with CamReader(path) as reader:
        np.testing.assert_allclose(reader.read("img_a").cams, cams, atol=5e-4)


def test_values_outside_unit_range_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"img_a: CAM values must lie in \[0, 1\]"):
        write_file(tmp_path / "cams.h5", {"img_a": (np.full((1, 4, 4), 3.0, np.float32), [1])})


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_entry_is_refused_naming_it(tmp_path, kind):
    """Links, groups, strings, declared shapes beyond the attributes or any image: refused from the
    metadata by a read, an entry check and a merge, in one line, with nothing large allocated."""
    path, other, merged = tmp_path / "cams.h5", tmp_path / "other.h5", tmp_path / "merged.h5"
    write_file(path, make_entries(np.random.default_rng(7)))
    write_file(other, make_entries(np.random.default_rng(8)))
    make_hostile(path, "img_b", kind, other)
    assert path.stat().st_size < 100_000  # the declared 10^10 pixels were never written
    tracemalloc.start()
    try:
        with CamReader(path) as reader:
            with pytest.raises(InputError) as read:
                reader.read("img_b")
            with pytest.raises(InputError) as checked:
                reader.check_entry("img_b")
            assert reader.read("img_a").cams.shape == (2, 12, 16)  # the other entries stay readable
        with pytest.raises(InputError) as merge:
            merge_shards([path], merged, make_meta())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000
    for message in (str(read.value), str(checked.value), str(merge.value)):
        assert message.startswith(f"{path}: CAM entry 'img_b' ") and "\n" not in message
        assert HOSTILE[kind] in message and "re-run infer_cam" in message
    if kind == "external_link":
        assert repr(str(other)) in str(read.value)
    assert not merged.exists() and path.exists()  # a refused merge writes nothing and keeps its input


@pytest.mark.parametrize("link", ["soft", "external"])
def test_cams_group_held_elsewhere_is_refused(tmp_path, link):
    path, other = tmp_path / "cams.h5", tmp_path / "other.h5"
    write_file(path, make_entries(np.random.default_rng(9)))
    write_file(other, make_entries(np.random.default_rng(10)))
    with h5py.File(path, "r+") as f:
        f.move("cams", "elsewhere")
        f["cams"] = h5py.SoftLink("/elsewhere") if link == "soft" else h5py.ExternalLink(str(other), "/cams")
    with pytest.raises(InputError, match=f"^{path}: 'cams' is an? {link} link to .*not a group stored in this file"):
        CamReader(path)


def test_format_1_values_outside_unit_range_are_refused(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({**make_meta().to_attrs(), "format_version": 1, "num_images": 2})
        for image_id, value in (("three", 3.0), ("nan", np.nan)):
            ds = f.require_group("cams").create_dataset(image_id, data=np.full((1, 4, 4), value, np.float16))
            ds.attrs.update({"class_indices": np.array([1], np.int16), "height": 4, "width": 4})
    with CamReader(path) as reader:
        for image_id in ("three", "nan"):
            with pytest.raises(InputError, match=f"CAM entry '{image_id}' holds values .* outside the \\[0, 1\\]"):
                reader.read(image_id)


@pytest.mark.parametrize("attr, value, problem", [
    ("format_version", np.array([1, 2]), "format version"),
    ("num_images", "three", "holds 3 entries but says three"),
    ("classes", 7, "attributes are not those a writer stores"),
])
def test_hostile_file_attributes_are_refused(tmp_path, attr, value, problem):
    path = tmp_path / "cams.h5"
    write_file(path, make_entries(np.random.default_rng(11)))
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(InputError, match=f"^{path}: .*{problem}"):
        CamReader(path)


def test_damaged_metadata_is_reported_as_bad_input(tmp_path):
    """A metadata block made unreadable: whichever error libhdf5 raised (OSError, KeyError or
    RuntimeError depending on the call), the reader reports bad input naming the file."""
    good = tmp_path / "cams.h5"
    write_file(good, make_entries(np.random.default_rng(12)))
    copies = damaged_copies(good, tmp_path)
    assert {c.stem.split("_")[1] for c in copies} == {"TREE", "HEAP", "SNOD", "GCOL"}
    for path in copies:
        with pytest.raises(InputError, match=f"^{path}: .*cannot be read \\(corrupt or truncated file\\?\\)"):
            with CamReader(path) as reader:
                for _ in reader.entries():
                    pass
