"""Checkpoints are plain dicts saved atomically and loaded with ``weights_only=True``."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from stages.errors import InputError, MissingInputError
from stages.io.atomic import atomic_path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """A finished model file: CPU weights (whatever device and wrapper trained them) and its meta."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"model": weights, "meta": meta})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise InputError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


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
