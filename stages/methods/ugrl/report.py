"""What a UGRL run shows beyond mIoU: class uncertainties over training, and whether the reliable
pool really holds more correct labels than the labelled pixels as a whole (the paper's mechanism).

Both come from the per-step records the method keeps in its state (so a resumed run reports the
whole training) and go into the variant's outputs folder, which the Snakemake report shows.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stages.io.atomic import atomic_path
from stages.reporting.figures import new_figure, save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).astype(float)


def history_frames(history: list[dict[str, Any]], classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-step class uncertainties, per-step and total pool precision) as tables."""
    steps = [row["step"] for row in history]
    u = pd.DataFrame([row["u"] for row in history], columns=classes, index=pd.Index(steps, name="step"))
    counts = pd.DataFrame([row["counts"] for row in history], index=u.index,
                          columns=["pool_correct", "pool_known", "labelled_correct", "labelled_known"])
    total = counts.sum().to_frame().T.set_axis(pd.Index(["total"], name="step"))
    precision = pd.concat([counts, total])
    precision["pool_precision"] = _ratio(precision["pool_correct"], precision["pool_known"])
    precision["labelled_precision"] = _ratio(precision["labelled_correct"], precision["labelled_known"])
    return u, precision


def write_outputs(history: list[dict[str, Any]], classes: list[str], out_dir: Path) -> None:
    """class_uncertainty.{csv,png} and pool_precision.{csv,png} into ``out_dir``."""
    u, precision = history_frames(history, classes)
    with atomic_path(out_dir / "class_uncertainty.csv") as tmp:
        u.to_csv(tmp)
    with atomic_path(out_dir / "pool_precision.csv") as tmp:
        precision.to_csv(tmp)

    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    for name in classes:
        ax.plot(u.index, u[name], marker="." if len(u) < 50 else None, label=name)
    ax.set(xlabel="step", ylabel="u = 1 - cos(batch prototype, global prototype)",
           title="UGRL class uncertainty (gaps: class absent from the batch)")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out_dir / "class_uncertainty.png")

    per_step = precision.drop(index="total")
    total = precision.loc["total"]
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    for column, name in (("pool_precision", "reliable pool"), ("labelled_precision", "all labelled pixels")):
        ax.plot(per_step.index, per_step[column], marker="." if len(per_step) < 50 else None,
                label=f"{name} (overall {_percent(total[column])})")
    ax.set(xlabel="step", ylabel="label = GT (fraction)", ylim=(0, 1.02),
           title="Labels right against GT (train images with masks; reporting only)")
    ax.legend(fontsize=8)
    _save(fig, out_dir / "pool_precision.png")


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f}%"


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=110)
