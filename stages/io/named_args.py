"""``NAME=VALUE`` command-line arguments: how a rule hands a stage one file per variant or
refinement (``--pseudo none=results/... plmix=results/...``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from stages.errors import InputError


def named_values(values: Sequence[str], flag: str, form: str = "NAME=VALUE") -> dict[str, str]:
    """``NAME=VALUE`` arguments as an ordered mapping; names must be unique."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise InputError(f"{flag} {value!r}: expected {form}")
        if name in out:
            raise InputError(f"{flag}: name {name!r} given twice")
        out[name] = rest
    return out


def named_paths(values: Sequence[str], flag: str) -> dict[str, Path]:
    return {name: Path(path) for name, path in named_values(values, flag, "NAME=PATH").items()}
