"""Errors a person reads first: bad data, configuration or files, reported in one line.

A stage's checks raise ``InputError`` (a ``ValueError``) or ``MissingInputError`` (also a
``FileNotFoundError``) with a message that names the file or key and says what to do. ``run_stage``
prints such an error as one line, ``<stage>: error: <message>``, and exits with status 2; the
traceback follows only when ``STAGES_DEBUG=1`` is set. Any other exception is unexpected (a defect)
and keeps its traceback, after the same first line.
"""
from __future__ import annotations

import os
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


def first_line(stage: str, exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    return f"{stage}: error: {message}"


def run_stage(main: Callable[[], None], stage: str | None = None) -> None:
    """Run a stage's ``main`` as its ``__main__`` block does, reporting errors as described above."""
    # python -m stages.x gives .../stages/x.py; stages.launch gives stages.x
    stage = stage or os.path.basename(sys.argv[0]).removesuffix(".py").removeprefix("stages.")
    try:
        main()
    except InputError as exc:
        print(first_line(stage, exc), file=sys.stderr)
        if os.environ.get(DEBUG_VARIABLE) == "1":
            traceback.print_exc()
        else:
            print(f"({DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a defect: the first line, then everything a bug report needs
        print(first_line(stage, exc), file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
