"""Write-then-rename helpers, so a killed job never leaves a file that looks complete.

Every temporary is a hidden sibling of its target named ``.<target name>.tmp<pid>``: downstream
globs and Snakemake never take it for an output, and its name says which target it belongs to.
A killed job (SIGKILL, power loss) leaves it behind; the next write of the same target removes
it (``remove_stale_temporaries``), so every stage that writes through ``atomic_path`` or
``atomic_dir`` cleans up after a kill by itself.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

from stages.errors import no_space_cause, no_space_error

_TEMP_NAME = re.compile(r"\..+\.tmp[0-9]+")


def temp_path_for(path: str | os.PathLike) -> Path:
    """A sibling name that downstream globs and Snakemake never mistake for the real output.

    The pid keeps the live temporary apart from a stale one of an earlier job on the same target,
    so a job that lingers after being replaced can never rename its file over the new one's.
    """
    p = Path(path)
    return p.with_name(f".{p.name}.tmp{os.getpid()}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temporary of ``temp_path_for`` (live or left by a kill)."""
    return _TEMP_NAME.fullmatch(Path(path).name) is not None


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove what earlier, killed writes of ``target`` left: files or folders named
    ``.<target name>.tmp<pid>`` beside it. Returns the removed paths.

    Only ``target``'s own temporaries match, so jobs writing other targets in the same folder are
    never disturbed; the same target is never written by two jobs at once, so whatever matches is
    stale. Inside a temporary folder nothing is stale (``atomic_dir`` makes it fresh and only its
    job writes there), which spares listing a folder of thousands of files once per file written.
    """
    final = Path(target)
    parent = final.parent
    if is_temporary(parent) or not parent.is_dir():
        return []
    own = re.compile(re.escape(f".{final.name}.tmp") + "[0-9]+")
    removed = []
    for entry in os.scandir(parent):
        if not own.fullmatch(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        print(f"removed {path}, left by an earlier write of {final} that did not finish", file=sys.stderr)
    return removed


@contextlib.contextmanager
def _named_when_disk_full(target: Path) -> Iterator[None]:
    """Turn a full disk met while writing ``target`` into one ``NoSpaceError`` naming it; for a
    folder written by ``atomic_dir``, the folder rather than a file inside its temporary."""
    try:
        yield
    except Exception as exc:
        cause = no_space_cause(exc)
        if cause is None:
            raise
        raise no_space_error(target, cause) from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, previous: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it onto ``path`` only if the block succeeds.

    ``previous``: where the file it replaces is kept (a hard link or a rename, no copy), instead
    of being dropped. A full disk is reported as ``NoSpaceError`` naming ``path``, whatever the
    writer raised.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = temp_path_for(final)
    try:
        with _named_when_disk_full(final):
            yield tmp
            if previous is not None and final.exists():
                _keep_as(final, Path(previous))
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _keep_as(path: Path, previous: Path) -> None:
    """Keep ``path``'s current file under ``previous`` too: a hard link, so that ``path`` never goes
    missing until it is replaced; a rename where the file system has no hard links."""
    previous.unlink(missing_ok=True)
    try:
        os.link(path, previous)
    except OSError:
        os.replace(path, previous)


def publish_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """``path`` with ``source``'s bytes, atomically: a hard link where the file system allows (no
    copy; deleting either name later leaves the other whole), a copy where it does not."""
    with atomic_path(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


@contextlib.contextmanager
def atomic_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; it replaces ``directory`` only if the block
    succeeds, so a folder of outputs is either the old one or complete."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = temp_path_for(final)
    tmp.mkdir()
    try:
        with _named_when_disk_full(final):
            yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
