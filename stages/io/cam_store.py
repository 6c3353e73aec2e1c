"""CAM store: one HDF5 file per (CAM run, split), streamed in and out one image at a time.

Layout (format version 2; version 1 files, float16 + gzip, are still read)::

    cams.h5
    |-- attrs   format_version  1
    |           dataset         data set name (DatasetIndex.name)
    |           split           split the CAMs were computed for
    |           classes         class names, background at 0 (array of strings)
    |           backbone        CAM network backbone (of an imported file: what the user stated)
    |           scales          inference scales (float array); flip: bool
    |           checkpoint_sha256  short hash of the model file that made the CAMs
    |           source          the stage that wrote the file (infer_cam, refine_irn, or
    |                           import_cams:<format>:<folder>)
    |           refinement      JSON provenance when the CAM network was refined, e.g.
    |                           {"method": "plmix", "rounds": 3, "from_checkpoint_sha256": ...}; "" if raw
    |           num_images      written last: a file without it was never finished
    `-- cams/<image_id>         uint8 (K, H, W) at image resolution: round(255 * CAM), the CAM
                                in [0, 1] (ReLU, then divided by each class's maximum);
                                K = the image's present foreground classes; contiguous, no filter
        attrs   class_indices   int16 (K,), indices into ``classes`` (1..C-1), one per channel
                height, width   image size in pixels

An entry is read only if it is what a writer stores: a dataset held in this file (a hard link:
no soft or external link, no virtual dataset, no external raw storage, whose bytes would come
from elsewhere), uint8 (format 2) or float16 (format 1), shaped (len(class_indices), height,
width) with at most ``MAX_PIXELS`` pixels. All of that is checked from the metadata before any
value is read, so a damaged or hostile file is refused with a message naming the entry and never
makes the reader allocate what its header declares.

Reading one image with plain h5py::

    import h5py
    with h5py.File("cams.h5", "r") as f:
        cams, classes = f["cams/2007_000032"][()] / 255, f["cams/2007_000032"].attrs["class_indices"]

Writers fill a temporary sibling name and rename it when the last entry is in, so a killed job
leaves nothing under the output name (its temporary is removed by the next write of the same
file, see ``stages.io.atomic``); readers also refuse a file without ``num_images``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

import h5py
import numpy as np
from h5py import h5a, h5d, h5l, h5o, h5s

from stages.errors import InputError, MissingEntryError, MissingInputError
from stages.io.atomic import atomic_path, is_temporary

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class DatasetLike(Protocol):
    """What a CAM file is checked against: a data set's name and class list (a DatasetIndex)."""

    name: str
    classes: list[str]
GROUP = "cams"
# 8 bits per CAM value, stored as is: a quarter of float32's bytes, and a read is one contiguous
# copy plus a cheap uint8 -> float32 scale, faster than a float16 .npy read once converted (float16
# -> float32 is the slow step) and than gzip's inflate (format 1). The step, 1/255, is a fifth of
# the threshold sweep's; benchmarks/cam_store.py has the figures.
LEVELS = 255
_TOLERANCE = 1e-3  # float rounding above 1 (x / (max + eps)) is not an error
STORED_DTYPES = {np.dtype(np.uint8): "uint8 (format 2)", np.dtype(np.float16): "float16 (format 1)"}
# PIL refuses to open an image of more than twice its Image.MAX_IMAGE_PIXELS (a decompression
# bomb), so no stage made CAMs of a larger image; a larger declared entry is damaged or hostile.
MAX_PIXELS = 2 * 89_478_485
REMEDY = "make the file again (re-run infer_cam, refine or refine_irn, or re-import it with import_cams)"
_SHARD_NAME = re.compile(r"\..+\.shard[0-9]+")


@dataclass(frozen=True)
class CamFileMeta:
    """What made a CAM file; stored as file attributes and compared with the index on read."""

    dataset: str
    split: str
    classes: tuple[str, ...]
    backbone: str
    scales: tuple[float, ...]
    flip: bool
    checkpoint_sha256: str
    source: str = "infer_cam"
    refinement: str = ""  # JSON provenance of a refined CAM network (method, rounds, ...); "" = raw

    def to_attrs(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION, "dataset": self.dataset, "split": self.split,
            "classes": np.array(self.classes, dtype=h5py.string_dtype()),
            "backbone": self.backbone, "scales": np.asarray(self.scales, dtype=np.float64),
            "flip": bool(self.flip), "checkpoint_sha256": self.checkpoint_sha256,
            "source": self.source, "refinement": self.refinement,
        }

    @classmethod
    def from_attrs(cls, path: Path, attrs: h5py.AttributeManager) -> "CamFileMeta":
        try:
            return cls(
                dataset=_as_str(attrs["dataset"]), split=_as_str(attrs["split"]),
                classes=tuple(_as_str(c) for c in attrs["classes"]),
                backbone=_as_str(attrs["backbone"]),
                scales=tuple(float(s) for s in attrs["scales"]), flip=bool(attrs["flip"]),
                checkpoint_sha256=_as_str(attrs["checkpoint_sha256"]), source=_as_str(attrs["source"]),
                refinement=_as_str(attrs.get("refinement", "")),
            )
        except KeyError as exc:
            raise InputError(f"{path}: CAM file lacks attribute {exc.args[0]!r}") from None
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: CAM file attributes are not those a writer stores ({exc}); "
                             f"{REMEDY}") from None


@dataclass(frozen=True)
class CamEntry:
    """One image's CAMs: channel k belongs to class ``class_indices[k]`` of the file's class list."""

    cams: np.ndarray  # float32 (K, H, W)
    class_indices: np.ndarray  # int64 (K,)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.cams.shape[1]), int(self.cams.shape[2])


def _as_float(stored: np.ndarray) -> np.ndarray:
    """float32 CAMs in [0, 1] from an entry as stored: uint8 levels (format 2) or float16 (1)."""
    if stored.dtype == np.uint8:
        return np.multiply(stored, np.float32(1 / LEVELS), dtype=np.float32)
    return stored.astype(np.float32)


def _link_problem(group: h5py.h5g.GroupID, name: bytes) -> str | None:
    """How the link ``name`` points elsewhere than to an object in this file; None for a hard link.
    The link itself is inspected, never followed."""
    links = group.links
    kind = links.get_info(name).type
    if kind == h5l.TYPE_HARD:
        return None
    if kind == h5l.TYPE_SOFT:
        return f"is a soft link to {links.get_val(name).decode(errors='replace')!r}"
    if kind == h5l.TYPE_EXTERNAL:
        file, target = (v.decode(errors="replace") for v in links.get_val(name))
        return f"is an external link to {target!r} in {file!r}"
    return f"is a user-defined link (type {kind})"


def _storage_problem(dataset: h5d.DatasetID) -> str | None:
    """Why a dataset's values would not come from this file (virtual, external raw storage)."""
    plist = dataset.get_create_plist()
    if plist.get_layout() == h5d.VIRTUAL:
        return "is a virtual dataset that maps data of other datasets or files"
    if plist.get_external_count():
        return f"keeps its values in the external raw file {plist.get_external(0)[0].decode(errors='replace')!r}"
    return None


def _int_attr(obj: h5o.ObjectID, name: bytes, max_len: int | None = None) -> np.ndarray | None:
    """An integer attribute (a scalar, or a 1-D array of at most ``max_len`` values), None when it is
    missing or is something else; its size is checked before it is read."""
    try:
        attr = h5a.open(obj, name)
    except KeyError:
        return None
    shape, dtype = attr.shape, attr.dtype
    if dtype.kind not in "iu" or shape is None or not (
            shape == () if max_len is None else len(shape) == 1 and shape[0] <= max_len):
        return None
    value = np.empty(shape, dtype)
    attr.read(value)
    return value


def _is_utf8(name: str | bytes) -> bool:
    """Whether h5py decoded a link name as UTF-8 (it leaves other bytes as bytes or lone surrogates)."""
    if not isinstance(name, str):
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def shard_path(path: str | os.PathLike, rank: int) -> Path:
    """Where one DDP rank writes its part; hidden, so nothing downstream mistakes it for output."""
    p = Path(path)
    return p.with_name(f".{p.name}.shard{rank}")


def remove_shards(path: str | os.PathLike) -> list[Path]:
    """Delete every rank's shard of ``path``, including those of an earlier run with more ranks
    that was killed before merging. Called once ``path`` itself is complete: at the start of a
    run the shards may still be being written by the other ranks."""
    p = Path(path)
    own = re.compile(re.escape(f".{p.name}.shard") + "[0-9]+")
    shards = [q for q in p.parent.iterdir() if own.fullmatch(q.name)] if p.parent.is_dir() else []
    for shard in shards:
        shard.unlink(missing_ok=True)
    return shards


def _free_space_on_error(tmp: Path) -> Callable[..., bool]:
    """An exit callback that empties the temporary file when the block failed: it is discarded
    anyway, and on a full disk HDF5 can then close it (a file it cannot close crashes the
    interpreter at exit)."""
    def free(exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc_type is not None:
            os.truncate(tmp, 0)
        return False
    return free


class CamWriter:
    """Streams entries into a temporary file and renames it onto ``path`` on a clean exit.

    Use as a context manager; an exception inside the block removes the temporary file. Once a
    complete file (not a shard) is in place, any shards of it are removed: they were merged, or
    left by a killed multi-process run.
    """

    def __init__(self, path: str | os.PathLike, meta: CamFileMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        self._stack = contextlib.ExitStack()
        self._file: h5py.File | None = None
        self._group: h5py.Group | None = None
        self._count = 0

    def __enter__(self) -> "CamWriter":
        with contextlib.ExitStack() as stack:  # unwound if the file cannot be begun (a full disk)
            tmp = stack.enter_context(atomic_path(self.path))
            self._file = stack.enter_context(h5py.File(tmp, "w"))
            stack.push(_free_space_on_error(tmp))  # runs before the file is closed
            self._file.attrs.update(self.meta.to_attrs())
            self._group = self._file.create_group(GROUP)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        failed = None
        if exc_type is None and self._file is not None:
            try:
                self._file.attrs["num_images"] = self._count
                self._file.flush()  # a full disk fails here rather than in a close that cannot finish
            except Exception as error:
                failed, exc_type, exc, tb = error, type(error), error, error.__traceback__
        suppressed = self._stack.__exit__(exc_type, exc, tb)
        if failed is not None:
            raise failed
        if exc_type is None and not _SHARD_NAME.fullmatch(self.path.name):
            stale = remove_shards(self.path)
            if stale:
                print(f"removed {len(stale)} shard(s) of {self.path}", file=sys.stderr)
        return suppressed

    def _check_new(self, image_id: str) -> None:
        if self._group is None:
            raise RuntimeError(f"{self.path}: CamWriter used outside its 'with' block")
        if "/" in image_id or image_id in ("", ".", ".."):
            raise InputError(f"{self.path}: image id {image_id!r} cannot be an HDF5 entry name")
        if image_id in self._group:
            raise ValueError(f"{self.path}: image id {image_id!r} written twice")

    def write(self, image_id: str, cams: np.ndarray, class_indices: Sequence[int]) -> None:
        """Store one image's CAMs (K, H, W) for the K listed classes; written to disk at once."""
        self._check_new(image_id)
        cams = np.asarray(cams)
        idx = np.asarray(class_indices, dtype=np.int16).reshape(-1)
        if cams.ndim != 3 or cams.shape[0] != idx.size:
            raise ValueError(f"{self.path}: {image_id}: CAMs of shape {cams.shape} do not match "
                             f"{idx.size} class indices")
        if idx.size and (idx.min() < 1 or idx.max() >= len(self.meta.classes)):
            raise ValueError(f"{self.path}: {image_id}: class indices {idx.tolist()} outside "
                             f"1..{len(self.meta.classes) - 1}")
        if cams.size and not (cams.min() >= 0 and cams.max() <= 1 + _TOLERANCE):
            raise ValueError(f"{self.path}: {image_id}: CAM values must lie in [0, 1], got "
                             f"{cams.min():.4g}..{cams.max():.4g} (normalise each class by its maximum)")
        data = np.rint(np.clip(cams, 0, 1) * LEVELS).astype(np.uint8)
        ds = self._group.create_dataset(image_id, data=data)
        ds.attrs["class_indices"] = idx
        ds.attrs["height"], ds.attrs["width"] = cams.shape[1], cams.shape[2]
        ds.id.flush()  # a full disk fails here, not later as an error HDF5 can only print
        self._count += 1

    def copy_entries(self, reader: "CamReader") -> None:
        """Copy every entry of another file as stored (not re-encoded; readers go by the dtype)."""
        for image_id in reader.ids():
            self._check_new(image_id)
            reader.copy_entry(image_id, self._group)
            self._count += 1


_Result = TypeVar("_Result")


def _damage_is_input_error(method: Callable[..., _Result]) -> Callable[..., _Result]:
    """libhdf5 reports a damaged file (bytes flipped, cut short) as OSError, KeyError or RuntimeError
    depending on the call; the reader's methods report it as bad input naming the file (and entry)."""
    @functools.wraps(method)
    def checked(self: "CamReader", *args: object) -> _Result:
        try:
            return method(self, *args)
        except InputError:
            raise
        except (OSError, KeyError, RuntimeError) as exc:
            entry = f"entry {args[0]!r} " if args else ""
            raise InputError(f"{self.path}: {entry}cannot be read (corrupt or truncated file?): {exc}") from exc
    return checked


class CamReader:
    """Lazy read access: opening reads attributes and names only; entries load one at a time.

    libhdf5 keeps some metadata (~14 KiB) of every entry read until the file is closed, ~130 MiB
    over VOC train_aug; the file is therefore reopened every ``REOPEN_EVERY`` reads so that a pass
    over any number of images runs in flat memory (benchmarks/scale.py).

    Entries are opened and read with libhdf5's low-level calls (h5py.h5o, h5a, h5d): h5py's Dataset
    objects and attribute manager would add about 0.1 ms per read, a quarter of reading a VOC-sized
    entry; so the checks of the module doc come at no cost on balance (benchmarks/cam_store.py).
    """

    REOPEN_EVERY = 256

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if is_temporary(self.path):
            raise InputError(f"{self.path}: this is a temporary file still being written (or left by "
                             f"a killed job); read the finished file instead")
        if not self.path.is_file():
            raise MissingInputError(f"{self.path}: CAM file not found")
        self._reads = 0
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: not a readable HDF5 CAM file (corrupt or truncated?): "
                             f"{exc}") from exc
        try:
            self._group = self._check_layout()
            self.meta = self._read_meta()
        except Exception:
            self._file.close()
            raise

    @_damage_is_input_error
    def _read_meta(self) -> CamFileMeta:
        return CamFileMeta.from_attrs(self.path, self._file.attrs)

    @_damage_is_input_error
    def _check_layout(self) -> h5py.Group:
        """The file's version, completeness and ``cams`` group (held in this file); returns the group."""
        attrs = self._file.attrs
        version = attrs.get("format_version")
        if not (np.ndim(version) == 0 and version in READABLE_VERSIONS):
            raise InputError(f"{self.path}: CAM file format version {version} (readable: "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
        if not self._file.id.links.exists(GROUP.encode()):
            raise InputError(f"{self.path}: no '{GROUP}' group; not a CAM file")
        problem = _link_problem(self._file.id, GROUP.encode())
        if problem:
            raise InputError(f"{self.path}: '{GROUP}' {problem}, not a group stored in this file; {REMEDY}")
        group = self._file[GROUP]
        if not isinstance(group, h5py.Group):
            raise InputError(f"{self.path}: '{GROUP}' is not a group of CAM entries; {REMEDY}")
        num_images = attrs.get("num_images")
        if num_images is None:
            raise InputError(f"{self.path}: CAM file was never finished (no num_images attribute)")
        if not (np.ndim(num_images) == 0 and num_images == len(group)):
            raise InputError(f"{self.path}: holds {len(group)} entries but says {num_images}; "
                             f"the file is damaged")
        return group

    def __enter__(self) -> "CamReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @_damage_is_input_error
    def __len__(self) -> int:
        return len(self._group)

    @_damage_is_input_error
    def __contains__(self, image_id: str) -> bool:
        """Whether the file has an entry of that name (of any kind: a read checks what it is)."""
        return "/" not in image_id and self._group.id.links.exists(image_id.encode())

    @_damage_is_input_error
    def ids(self) -> list[str]:
        ids = list(self._group.keys())
        undecodable = [i for i in ids if not _is_utf8(i)]
        if undecodable:
            raise InputError(f"{self.path}: entry name {undecodable[0]!r} is not UTF-8 text, which no "
                             f"writer stores (corrupt file?); {REMEDY}")
        return ids

    def _refuse(self, image_id: str, problem: str) -> InputError:
        return InputError(f"{self.path}: CAM entry {image_id!r} {problem}; {REMEDY}")

    @_damage_is_input_error
    def _open_entry(self, image_id: str) -> tuple[h5d.DatasetID, np.ndarray]:
        """The entry's dataset and class indices once its metadata is what a writer stores (see the
        module doc); nothing of its values is read."""
        if image_id not in self:
            raise MissingEntryError(f"{self.path}: image id {image_id!r} is not in this CAM file "
                                    f"({len(self)} entries, split {self.meta.split!r})")
        name = image_id.encode()
        problem = _link_problem(self._group.id, name)
        if problem:
            raise self._refuse(image_id, f"{problem}, not data stored in this file")
        dataset = h5o.open(self._group.id, name)
        if not isinstance(dataset, h5d.DatasetID):
            kind = "group" if isinstance(dataset, h5py.h5g.GroupID) else "named data type"
            raise self._refuse(image_id, f"is a {kind}, not a dataset of CAM values")
        problem = _storage_problem(dataset)
        if problem:
            raise self._refuse(image_id, f"{problem}, not data stored in this file")
        shape, dtype = dataset.shape, dataset.dtype
        if dtype not in STORED_DTYPES:
            raise self._refuse(image_id, f"holds {dtype} values; CAM values are stored as "
                                         f"{' or '.join(STORED_DTYPES.values())}")
        if shape is None or len(shape) != 3:
            raise self._refuse(image_id, f"has shape {shape}; CAMs are (classes, height, width)")
        height, width = _int_attr(dataset, b"height"), _int_attr(dataset, b"width")
        if height is None or width is None:
            raise self._refuse(image_id, "lacks an integer 'height' or 'width' attribute")
        if shape[1:] != (int(height), int(width)):
            raise self._refuse(image_id, f"is stored as {shape[1]} x {shape[2]} pixels but its "
                                         f"attributes say {height} x {width}")
        if shape[1] * shape[2] > MAX_PIXELS:
            raise self._refuse(image_id, f"declares {shape[1]} x {shape[2]} pixels, more than the {MAX_PIXELS} "
                                         f"of the largest image the stages read")
        num_classes = len(self.meta.classes)
        indices = _int_attr(dataset, b"class_indices", max_len=num_classes - 1)
        if indices is None or indices.size != shape[0]:
            raise self._refuse(image_id, f"has {shape[0]} CAM channel(s) but no 'class_indices' attribute "
                                         f"of as many integers (at most {num_classes - 1}, one per class)")
        listed = indices.tolist()  # a few values: Python's min, max and set beat numpy's overhead
        if listed and (min(listed) < 1 or max(listed) >= num_classes or len(set(listed)) != len(listed)):
            raise self._refuse(image_id, f"has class indices {listed}, not distinct classes among "
                                         f"1..{num_classes - 1}")
        return dataset, indices.astype(np.int64)

    def check_entry(self, image_id: str) -> None:
        """Refuse an entry a read would refuse before reading its values; reads no value itself."""
        self._open_entry(image_id)

    @_damage_is_input_error
    def read(self, image_id: str) -> CamEntry:
        self._reads += 1
        if self._reads % self.REOPEN_EVERY == 0 and self._file:  # (a closed file stays closed)
            self._file.close()
            self._file = h5py.File(self.path, "r")
            self._group = self._check_layout()
        dataset, class_indices = self._open_entry(image_id)
        stored = np.empty(dataset.shape, dataset.dtype)
        if stored.size:
            dataset.read(h5s.ALL, h5s.ALL, stored)
        cams = _as_float(stored)
        if stored.dtype != np.uint8 and cams.size and not (cams.min() >= 0 and cams.max() <= 1 + _TOLERANCE):
            raise self._refuse(image_id, f"holds values {cams.min():.4g}..{cams.max():.4g}, outside the [0, 1] "
                                         f"of CAMs")
        return CamEntry(cams=cams, class_indices=class_indices)

    def entries(self, ids: Iterable[str] | None = None) -> Iterator[tuple[str, CamEntry]]:
        """Yield (id, entry) one at a time, so memory does not grow with the number of images."""
        for image_id in (self.ids() if ids is None else ids):
            yield image_id, self.read(image_id)

    @_damage_is_input_error
    def copy_entry(self, image_id: str, dest: h5py.Group) -> None:
        """Copy one entry into ``dest`` as stored (not re-encoded), once it passed a read's checks."""
        dataset, _ = self._open_entry(image_id)
        h5o.copy(dataset, b".", dest.id, image_id.encode())

    def check_matches(self, index: DatasetLike, ids: Iterable[str] = ()) -> None:
        """Refuse CAMs made for another data set or class list, or lacking any of ``ids``."""
        if self.meta.dataset != index.name or list(self.meta.classes) != list(index.classes):
            raise InputError(
                f"{self.path}: CAM file was made for data set {self.meta.dataset!r} with classes "
                f"{list(self.meta.classes)}, but the index is {index.name!r} with classes {index.classes}")
        missing = [i for i in ids if i not in self]
        if missing:
            raise MissingEntryError(f"{self.path}: {len(missing)} image id(s) missing from the CAM file "
                           f"(split {self.meta.split!r}), e.g. {missing[:5]}")


def update_meta(path: str | os.PathLike, meta: CamFileMeta) -> None:
    """Rewrite a complete CAM file's attributes in place: for CAMs written before the network
    file they came from existed under its final meta (PL-Mix's rounds hash it after the sweep)."""
    with h5py.File(path, "r+") as f:
        f.attrs.update(meta.to_attrs())


def merge_shards(shards: Sequence[str | os.PathLike], path: str | os.PathLike, meta: CamFileMeta) -> None:
    """Join per-rank shard files into one CAM file (atomically), then delete the shards."""
    with CamWriter(path, meta) as writer:
        for shard in shards:
            with CamReader(shard) as reader:
                writer.copy_entries(reader)
    for shard in shards:
        Path(shard).unlink(missing_ok=True)
