"""Checkpoints are plain dicts saved atomically and loaded with ``weights_only=True``.

A resumable training state keeps the file it replaces as ``<name>.prev<suffix>`` (a hard link or
a rename, no copy): a latest file found damaged on resume falls back to it (``load_resumable``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from stages.errors import InputError, MissingInputError
from stages.io.atomic import atomic_path
from stages.io.tensor_files import load_tensor_file

REMAKE = "delete it and rerun the stage that wrote it"


def previous_path(path: str | os.PathLike) -> Path:
    """Where ``save_checkpoint(keep_previous=True)`` keeps the file it replaces: checkpoint.prev.pt."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write ``state`` atomically (a full disk is reported naming ``path``).

    ``keep_previous``: the file it replaces stays as ``previous_path(path)``. The one before that
    is deleted first, so the disk holds at most two checkpoints while the new one is written, and
    ``path`` is always complete (``load_resumable`` drops a damaged one). Without it, a kept
    previous file is removed: a finished state needs none.
    """
    previous = previous_path(path)
    if keep_previous and Path(path).exists():
        previous.unlink(missing_ok=True)
    with atomic_path(path, previous=previous if keep_previous else None) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a Python file, so that a full disk surfaces as ENOSPC
    if not keep_previous:
        previous.unlink(missing_ok=True)


def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """A finished model file: CPU weights (whatever device and wrapper trained them) and its meta."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"model": weights, "meta": meta})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    remedy: str = REMAKE) -> dict[str, Any]:
    """A checkpoint's dict; ``remedy`` (what to do) ends the error for a damaged file."""
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"{p}: checkpoint not found")
    return load_tensor_file(p, "checkpoint", remedy, map_location)


@dataclass
class Resumable:
    """A training state to resume, the file it came from, and the newer damaged files (with why)."""

    state: dict[str, Any]
    source: Path
    damaged: dict[Path, str] = field(default_factory=dict)


def load_resumable(path: str | os.PathLike) -> Resumable | None:
    """The newest readable of ``path`` and ``previous_path(path)``; None when neither exists.

    When every file there is damaged, an ``InputError`` names them all and says to delete them.
    """
    damaged: dict[Path, str] = {}
    for candidate in (Path(path), previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            return Resumable(load_checkpoint(candidate, remedy=""), candidate, damaged)
        except InputError as exc:
            damaged[candidate] = str(exc)
    if damaged:
        files = " ".join(str(p) for p in damaged)
        raise InputError(f"{'; '.join(damaged.values())}; no readable training state is left to resume: delete "
                         f"{'them' if len(damaged) > 1 else 'it'} (rm {files}) and rerun to train from step 0")
    return None


def file_sha256(path: str | os.PathLike, length: int = 16) -> str:
    """Short content hash recorded in downstream artifacts, so a file says which weights made it."""
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()[:length]


def files_sha256(paths: Iterable[str | os.PathLike], length: int = 16) -> str:
    """One short content hash over files and their names (e.g. the label maps a training reads):
    a change of any of them changes it."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0")
        _update(h, path)
    return h.hexdigest()[:length]


def _update(h: Any, path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def check_meta(path: str | os.PathLike, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint made for another backbone / class list, naming the file and the key."""
    for key, want in expected.items():
        got = meta.get(key)
        if got != want:
            raise InputError(f"{path}: checkpoint was made with {key}={got!r}, this run needs {want!r}")
