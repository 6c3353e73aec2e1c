"""CAM files with one hostile entry, made with plain h5py as a damaged copy or an attacker would.

``make_hostile(path, image_id, kind, other)`` replaces the entry ``image_id`` of a real CAM file by
the ``kind`` below (the entry count stays right, so only the entry itself is wrong); ``other`` is
another real CAM file, whose data the links, the virtual dataset and the external storage point
at. ``HOSTILE[kind]`` is the phrase the refusal must contain. Nothing large is written: the
oversized entries are chunked and never filled, so the file stays a few KiB.

``damaged_copies`` makes copies of a file with one libhdf5 metadata block each made unreadable.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

HUGE = 100_000  # a declared side: 10^10 pixels, refused before anything is allocated

Attrs = dict[str, object]


def _other_entry(other: Path) -> tuple[str, tuple[int, ...], np.dtype]:
    with h5py.File(other, "r") as f:
        name = next(iter(f["cams"]))
        return f"/cams/{name}", f["cams"][name].shape, f["cams"][name].dtype


def _external_link(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    group[name] = h5py.ExternalLink(str(other), _other_entry(other)[0])


def _soft_link(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    group[name] = h5py.SoftLink(f"/cams/{next(n for n in group if n != name)}")


def _group(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    group.create_group(name).attrs.update(attrs)


def _string(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    group.create_dataset(name, data=np.array([b"not a CAM"])).attrs.update(attrs)


def _huge(group: h5py.Group, name: str, shape: tuple[int, int, int], attrs: Attrs) -> None:
    ds = group.create_dataset(name, shape=shape, dtype=np.uint8, chunks=(1, 64, 64), compression="gzip")
    ds.attrs.update(attrs)


def _oversized(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    _huge(group, name, (1, HUGE, HUGE),
          {**attrs, "height": HUGE, "width": HUGE, "class_indices": np.array([1], np.int16)})


def _beyond_attributes(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    _huge(group, name, (1, HUGE, HUGE), {**attrs, "class_indices": np.array([1], np.int16)})


def _channels_without_class(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    shape = (len(attrs["class_indices"]) + 1, int(attrs["height"]), int(attrs["width"]))
    group.create_dataset(name, data=np.zeros(shape, np.uint8)).attrs.update(attrs)


def _virtual(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    target, shape, dtype = _other_entry(other)
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[...] = h5py.VirtualSource(str(other), target, shape=shape)
    group.create_virtual_dataset(name, layout).attrs.update(
        {**attrs, "height": shape[1], "width": shape[2], "class_indices": np.arange(1, shape[0] + 1, dtype=np.int16)})


def _external_storage(group: h5py.Group, name: str, attrs: Attrs, other: Path) -> None:
    shape = (1, int(attrs["height"]), int(attrs["width"]))
    ds = group.create_dataset(name, shape=shape, dtype=np.uint8, external=[(str(other), 0, int(np.prod(shape)))])
    ds.attrs.update({**attrs, "class_indices": np.array([1], np.int16)})


KINDS: dict[str, tuple[Callable[[h5py.Group, str, Attrs, Path], None], str]] = {
    "external_link": (_external_link, "is an external link to"),
    "soft_link": (_soft_link, "is a soft link to"),
    "group": (_group, "is a group, not a dataset"),
    "string_dataset": (_string, "values; CAM values are stored as uint8 (format 2) or float16 (format 1)"),
    "oversized_shape": (_oversized, f"declares {HUGE} x {HUGE} pixels"),
    "shape_beyond_attributes": (_beyond_attributes, f"is stored as {HUGE} x {HUGE} pixels but its attributes say"),
    "channels_without_class": (_channels_without_class, "CAM channel(s) but no 'class_indices'"),
    "virtual_dataset": (_virtual, "is a virtual dataset"),
    "external_raw_storage": (_external_storage, "keeps its values in the external raw file"),
}
HOSTILE = {kind: problem for kind, (_, problem) in KINDS.items()}


def make_hostile(path: Path, image_id: str, kind: str, other: Path) -> None:
    """Replace the entry ``image_id`` of the CAM file ``path`` by a hostile one of ``kind``."""
    with h5py.File(path, "r+") as f:
        group = f["cams"]
        attrs = dict(group[image_id].attrs)
        del group[image_id]
        KINDS[kind][0](group, image_id, attrs, other)


# signatures of the metadata blocks of the file format h5py writes by default: group B-trees,
# local heaps (link names), symbol table nodes, global heaps (string attributes). libhdf5 checks
# them first, so a copy with one overwritten fails at once, at whichever call reads that block
# (random bit flips can also make libhdf5 itself loop, which no reader can guard against).
SIGNATURES = re.compile(rb"TREE|HEAP|SNOD|GCOL")


def damaged_copies(path: Path, folder: Path) -> list[Path]:
    """One copy of ``path`` per metadata block, with that block's signature overwritten."""
    data = path.read_bytes()
    copies = []
    for k, found in enumerate(SIGNATURES.finditer(data)):
        copy = folder / f"damaged{k}_{found.group().decode()}.h5"
        copy.write_bytes(data[:found.start()] + b"XXXX" + data[found.end():])
        copies.append(copy)
    return copies
