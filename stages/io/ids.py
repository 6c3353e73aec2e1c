"""The one rule for names that become file names: image ids, and ids a user types.

An id is joined to a folder (``JPEGImages/<id>.jpg``, ``<out_dir>/<id>.png``), so an id that
holds a path (``../../outside/x``, ``/etc/passwd``) would read or write a file outside the data
or results folder, and a hidden or control-character name would make files nobody sees. An
invisible character (a zero-width space, a direction mark, a no-break space: Unicode's format,
control and separator characters, spaces other than U+0020) makes an id that looks like a file
that is there but names another one, so it is refused naming the character. Every place that
turns an id into a path calls :func:`check_id`, so the rule cannot drift.
"""
from __future__ import annotations

import unicodedata
from pathlib import PureWindowsPath

from stages.errors import InputError

RULE = ("an id must be a plain file name: not empty, no / or \\, not starting with '.', no control or "
        "invisible characters")
# Unicode categories no id may hold: control, format (zero-width, direction marks, byte-order mark),
# surrogate (a file name byte that is not UTF-8), line and paragraph separators; spaces (Zs) but U+0020
INVISIBLE = {"Cc": "a control character", "Cf": "an invisible format character",
             "Cs": "a byte of a file name that is not UTF-8", "Zl": "a line separator",
             "Zp": "a paragraph separator", "Zs": "a space other than U+0020"}


def _invisible(name: str) -> str | None:
    """'U+200B ZERO WIDTH SPACE (an invisible format character)' for the first such character."""
    for char in name:
        kind = INVISIBLE.get(unicodedata.category(char))
        if kind is not None and char != " ":
            label = unicodedata.name(char, "")
            return f"U+{ord(char):04X}{' ' + label if label else ''} ({kind})"
    return None


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
    invisible = _invisible(name)
    if invisible is not None:
        return f"contains {invisible}: remove it from the id (and from the file name, if that has it too)"
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
