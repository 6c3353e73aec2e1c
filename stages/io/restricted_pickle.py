"""Reading pickled ``.npy`` files without letting them run code.

A dictionary saved with ``np.save`` is a pickle, and loading a pickle can call anything the file
names (``os.system``, ``builtins.exec``, ...). Other methods' CAM files are such dictionaries, so
they are read by :class:`RestrictedUnpickler`, never by ``np.load(allow_pickle=True)``: it rebuilds
numpy arrays, dtypes and scalars in plain containers and refuses every other global before it is
looked up. IRN's files hold torch tensors too (``keys``, ``cam``): their bytes go through torch's
own restricted loader (``weights_only=True``), never through torch's pickle helper, which is not.
"""
from __future__ import annotations

import collections
import io
import pickle
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

from stages.errors import InputError


def _storage_from_bytes(data: bytes) -> object:
    """What ``torch.storage._load_from_bytes`` gives (a pickled tensor's storage), but through
    torch's restricted loader: torch's own helper runs ``torch.load(weights_only=False)``."""
    import torch  # only files that hold tensors (IRN's) need it

    from stages.io.tensor_files import reason, refused_global

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "TypedStorage is deprecated")
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:  # its message advises weights_only=False: not ours to give
            name = refused_global(exc)
            why = f"they name {name}" if name else reason(exc)
            raise pickle.UnpicklingError(f"torch's weights-only loader refused a tensor's bytes: {why}") from None


def _rebuild_tensor(*args: object) -> object:
    """``torch._utils._rebuild_tensor_v2``, which torch's restricted loader admits as well."""
    from torch._utils import _rebuild_tensor_v2

    return _rebuild_tensor_v2(*args)


_MULTIARRAY = np._core.multiarray
# What numpy's pickles of arrays, dtypes and scalars name (numpy 1 wrote numpy.core, 2 numpy._core),
# and what a pickled CPU tensor names: IRN stores ``keys`` and ``cam`` as torch tensors.
_ADMITTED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, name): getattr(_MULTIARRAY, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,  # a tensor's (empty) backward hooks
}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and scalars (and CPU tensors, through torch's weights-only
    loader) in plain containers; any other global is refused before it is looked up, so a file
    cannot make the loader call anything else (``os.system``, ``builtins.exec``, ...)."""

    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise InputError(f"{self.source}: refused to unpickle {module}.{name}: only numpy arrays, dtypes, "
                             f"scalars, tensors and plain containers are loaded from CAM files") from None


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_pickled_npy(path: Path) -> object:
    """The object an ``np.save(path, obj)`` of a dictionary stored, rebuilt by RestrictedUnpickler."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            _, _, dtype = _HEADER_READERS[version](f)
        except (ValueError, KeyError, EOFError) as exc:
            raise InputError(f"{path}: not a .npy file numpy's format 1 or 2 can read ({exc})") from exc
        if dtype != np.dtype(object):
            raise InputError(f"{path}: holds a plain {dtype} array, not a dictionary; use format array")
        try:
            obj = RestrictedUnpickler(f, path).load()
        except InputError:
            raise
        except Exception as exc:  # a truncated or malformed pickle fails in many ways
            raise InputError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from exc
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
