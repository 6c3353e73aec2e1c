"""A data set read in place must not make the pipeline read files outside its folder.

Every file taken from a data set's folder (split lists, ``classes.txt``, ``image_labels.json``,
annotation XML, COCO instances JSON, images, masks, scribbles) passes :meth:`DataFolder.refuse_outside`
before anything reads it: a symbolic link, or a file in a linked folder, that leads out of the
folder is refused, naming it, unless the data set's ``follow_symlinks_outside`` allows it.
Otherwise a data set from elsewhere could make the pipeline read a file it never showed
(``image_labels.json -> ~/.ssh/id_rsa``), copy it into results, or print its first line in an
error message. Text files are read with :meth:`DataFolder.read_text`: the check, then UTF-8 only
(``stages.io.text``).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from stages.errors import InputError
from stages.io.text import read_utf8


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


@dataclass(frozen=True)
class DataFolder:
    """A data set's folder, the config section that holds its ``follow_symlinks_outside`` (named
    in the error) and that setting."""

    root: Path
    setting: str
    follow_symlinks_outside: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.realpath(self.root)))

    def links_outside(self, paths: Iterable[Path]) -> list[Path]:
        """The ``paths`` that resolve outside the folder: symbolic links, or files in a folder that is
        one (then the folder is listed). One directory listing per folder, no stat per file, so a
        data set of 100 000 images costs a few listings."""
        wanted: dict[Path, set[str]] = defaultdict(set)
        for path in paths:
            wanted[Path(path).parent].add(Path(path).name)
        outside = []
        for folder, names in wanted.items():
            if not folder.is_dir():
                continue
            if not _inside(folder, self.root):
                outside.append(folder)
                continue
            with os.scandir(folder) as entries:
                links = [entry.name for entry in entries if entry.name in names and entry.is_symlink()]
            outside += [folder / name for name in links if not _inside(folder / name, self.root)]
        return sorted(outside)

    def refuse_outside(self, paths: Iterable[Path]) -> None:
        """InputError naming the ``paths`` that lead outside the folder, unless that is allowed.
        Only names are shown, never what the files hold: they are not read."""
        if self.follow_symlinks_outside:
            return
        outside = self.links_outside(paths)
        if outside:
            shown = "; ".join(f"{p} -> {os.path.realpath(p)}" for p in outside[:5])
            more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
            raise InputError(f"{shown}{more}: {len(outside)} path(s) of the data set lead outside its folder "
                             f"{self.root} through a symbolic link, and are not read. If that is intended, set "
                             f"{self.setting}.follow_symlinks_outside: true (--follow-symlinks-outside)")

    def read_text(self, path: Path, what: str) -> str:
        """The UTF-8 text of ``path``, a ``what`` of the data set, once it is known to lie inside."""
        self.refuse_outside([path])
        return read_utf8(path, what)
