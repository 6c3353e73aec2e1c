"""Errors a person reads first: bad data, configuration or files, reported in one line.

A stage's checks raise ``InputError`` (a ``ValueError``) or ``MissingInputError`` (also a
``FileNotFoundError``) with a message that names the file or key and says what to do. ``run_stage``
prints such an error as one line, ``<stage>: error: <message>``, and exits with status 2; the
traceback follows only when ``STAGES_DEBUG=1`` is set. A full disk (or quota) is reported the same
way, however the library that hit it wrapped the error. Any other exception is unexpected (a
defect) and keeps its traceback, after the same first line.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Callable

DEBUG_VARIABLE = "STAGES_DEBUG"


class InputError(ValueError):
    """The user's data, configuration or files are wrong; the message says which and what to do."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the stage was given is not there."""


class MissingEntryError(InputError, KeyError):
    """An id, split or entry the stage needs is not in the file it was given."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's quoted repr


class NoSpaceError(InputError):
    """A write failed because its device (or the user's quota) is full."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")  # HDF5's error stack, which h5py raises as RuntimeError too


def _errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = _HDF5_ERRNO.search(str(exc))
    return int(found.group(1)) if found else None


def no_space_cause(exc: BaseException) -> BaseException | None:
    """The ENOSPC/EDQUOT error behind ``exc``, if any: torch's zip writer raises a RuntimeError
    ("unexpected pos ...") from an OSError, h5py an OSError or a RuntimeError in HDF5's words."""
    seen: BaseException | None = exc
    while seen is not None:
        if _errno(seen) in _NO_SPACE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def no_space_error(path: str | os.PathLike | None, cause: BaseException) -> NoSpaceError:
    """``<file>: no space left on the device while writing it; free space (df -h <folder>) and rerun``."""
    folder = os.path.dirname(os.path.abspath(path)) if path else "<output folder>"
    if _errno(cause) == errno.EDQUOT:
        problem, check = "disk quota exceeded", "quota -s"
    else:
        problem, check = "no space left on the device", f"df -h {folder}"
    return NoSpaceError(f"{path or 'an output file'}: {problem} while writing it; free space ({check}) and rerun")


def first_line(stage: str, exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    return f"{stage}: error: {message}"


def run_stage(main: Callable[[], None], stage: str | None = None) -> None:
    """Run a stage's ``main`` as its ``__main__`` block does, reporting errors as described above."""
    # python -m stages.x gives .../stages/x.py; stages.launch gives stages.x
    stage = stage or os.path.basename(sys.argv[0]).removesuffix(".py").removeprefix("stages.")
    try:
        main()
    except Exception as exc:
        cause = None if isinstance(exc, InputError) else no_space_cause(exc)
        error = no_space_error(getattr(cause, "filename", None), cause) if cause is not None else exc
        print(first_line(stage, error), file=sys.stderr)
        if not isinstance(error, InputError):  # a defect: everything a bug report needs
            traceback.print_exc()
            sys.exit(1)
        if os.environ.get(DEBUG_VARIABLE) == "1":
            traceback.print_exc()
        else:
            print(f"({DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
