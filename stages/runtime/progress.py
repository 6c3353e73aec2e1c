"""Progress bars that suit both a terminal and a job log (where per-item redraws flood the file)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 disable: bool = False, unit: str = "it", initial: int = 0,
                 unit_scale: bool = False) -> tqdm:
    """Redraw often on a terminal, every 10 s (plus start and end) when writing to a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit, initial=initial,
                unit_scale=unit_scale,
                file=sys.stderr, mininterval=0.5 if interactive else 10.0,
                maxinterval=10.0 if interactive else 60.0, dynamic_ncols=interactive,
                ascii=not interactive)
