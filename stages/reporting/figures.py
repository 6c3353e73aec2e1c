"""Figures of the reports: matplotlib's object API (no pyplot state, the Agg canvas), imported on
first use.

Every training and evaluation job imports the method modules that draw reports, and most draw
nothing or only at the very end; importing matplotlib up front cost each job about 0.6 s
(``python -X importtime -c "import stages.train_seg"``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.io.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """``matplotlib.figure.Figure(**kwargs)``."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_png(fig: Figure, path: str | Path, dpi: int = 100, **kwargs: Any) -> None:
    """The figure as a PNG at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **kwargs)
