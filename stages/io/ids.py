"""The one rule for names that become file names: image ids, and ids a user types.

An id is joined to a folder (``JPEGImages/<id>.jpg``, ``<out_dir>/<id>.png``), so an id that
holds a path (``../../outside/x``, ``/etc/passwd``) would read or write a file outside the data
or results folder, and a hidden or control-character name would make files nobody sees. Every
place that turns an id into a path calls :func:`check_id`, so the rule cannot drift.
"""
from __future__ import annotations

import unicodedata
from pathlib import PureWindowsPath

from stages.errors import InputError

RULE = "an id must be a plain file name: not empty, no / or \\, not starting with '.', no control characters"


def id_problem(name: object) -> str | None:
    """Why ``name`` cannot be an id (a phrase following "id NAME"), or None when it can."""
    if not isinstance(name, str):
        return f"is not a string ({type(name).__name__})"
    if not name:
        return "is empty"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "is an absolute path"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", ".."):
        return "names a folder"
    if name.startswith("."):
        return "starts with '.' (a hidden file)"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "contains a control character"
    return None


def check_id(name: str, where: str) -> str:
    """``name`` unchanged when it is a plain file name; else ValueError naming ``where`` and the id.

    ``where`` says where the id came from (a list file and line, an index file), so the user can
    find the line to fix.
    """
    problem = id_problem(name)
    if problem is not None:
        raise InputError(f"{where}: id {name!r} {problem}; {RULE}")
    return name
