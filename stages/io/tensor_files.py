"""Reading tensor files (.pt/.pth, .safetensors) that may be damaged, misnamed or hostile.

torch's loader runs with ``weights_only=True``: a pickle that names anything besides tensors and
plain containers is refused before it is looked up. When a read fails, torch's message ends in
advice for its own users (``weights_only=False`` "will likely succeed", allowlist the global),
which must never reach ours for a file they did not make: ``unreadable`` says instead what the
file is, what is wrong with it and what to do, in one line.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from stages.errors import InputError

SAFETENSORS_SUFFIX = ".safetensors"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# torch's and timm's preamble and advice (load the file some other way, file an issue, read the docs)
_NOT_THE_REASON = ("Weights only load failed", "weights_only", "Please file an issue", "Check the documentation",
                   "safe_globals", "trusted", "If you are seeing this error")


def file_format(path: str | os.PathLike) -> str | None:
    """"torch" (a torch.save zip or legacy pickle), "safetensors", or None, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "torch"  # a zip (torch.save) or a pickle's PROTO opcode (legacy torch.save)
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    return None


def _expected_format(path: Path) -> str:
    return "safetensors" if path.suffix == SAFETENSORS_SUFFIX else "torch"


def refused_global(exc: BaseException) -> str | None:
    """The global a weights-only unpickler refused (``posix.system``, ...), found in ``exc`` or
    the exceptions it was raised from; None when the failure was something else."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, pickle.UnpicklingError):
            found = _GLOBAL.search(str(seen))
            if found:
                return found.group(1)
        seen = seen.__cause__ or seen.__context__
    return None


def reason(exc: BaseException) -> str:
    """What went wrong, in torch's (or safetensors') words without their advice: the first
    sentence of the innermost error that is not advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    sentences = (s.strip().rstrip(".") for line in str(exc).splitlines() for s in re.split(r"(?<=\.) ", line))
    return next((s for s in sentences if s and not any(a in s for a in _NOT_THE_REASON)), type(exc).__name__)


def unreadable(path: str | os.PathLike, exc: BaseException, what: str, remedy: str) -> InputError:
    """The one-line error for a tensor file that could not be read: a refused pickle (named as
    such, never with advice to load it anyway), a file whose content is not what its suffix
    says, or a truncated or damaged one (``remedy``, if any, says what to do)."""
    path = Path(path)
    name = refused_global(exc)
    if name is not None:
        return InputError(f"{path}: refused to load, for safety: its pickle names {name}, which unpickling would "
                          f"call; a {what} may hold only tensors and plain containers. Do not load it by other "
                          f"means: use a {what} from a source you trust")
    found = file_format(path) if path.is_file() else None
    if found is not None and found != _expected_format(path):
        suffix = SAFETENSORS_SUFFIX if found == "safetensors" else ".pth"
        return InputError(f"{path}: a {found} file named {path.suffix}: rename it to {path.stem}{suffix}")
    return InputError(f"{path}: not a readable {what}, truncated or damaged ({reason(exc)})"
                      + (f"; {remedy}" if remedy else ""))


def load_tensor_file(path: str | os.PathLike, what: str, remedy: str, map_location: str | torch.device = "cpu",
                     lazy: bool = False) -> Any:
    """A .safetensors file's tensors, or what ``torch.load(weights_only=True)`` rebuilds of any
    other file; ``lazy`` maps a torch zip file's tensors instead of reading them (a check that
    the file can be read, which costs little). Errors are ``unreadable``'s."""
    path = Path(path)
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            from safetensors.torch import load_file

            return load_file(path, device=str(map_location))
        return torch.load(path, map_location=map_location, weights_only=True,
                          mmap=lazy and zipfile.is_zipfile(path))
    except Exception as exc:  # torch and safetensors raise many types for damaged or foreign files
        raise unreadable(path, exc, what, remedy) from exc
