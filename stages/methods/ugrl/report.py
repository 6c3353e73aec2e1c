"""What a UGRL run shows beyond mIoU: class uncertainties over training, whether the reliable pool
really holds more correct labels than the labelled pixels as a whole, and whether the certainty
that ranks pixels ranks label correctness within each class (the paper's mechanism; diagnostics.py).

Both come from the per-step records the method keeps in its state (so a resumed run reports the
whole training) and go into the variant's outputs folder, which the Snakemake report shows.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stages.io.atomic import atomic_path
from stages.methods.ugrl.diagnostics import SAMPLE_COLUMNS, mechanism_table
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


def write_outputs(history: list[dict[str, Any]], classes: list[str], out_dir: Path, samples: np.ndarray,
                  prototypes: np.ndarray, oracle: bool = False) -> None:
    """class_uncertainty.{csv,png}, pool_precision.{csv,png}, mechanism.{csv,png} and
    prototype_cosine.csv into ``out_dir``; an ORACLE pool's titles say so."""
    write_mechanism(pd.DataFrame(samples, columns=SAMPLE_COLUMNS).astype({"label": int, "right": bool, "pool": bool}),
                    classes, prototypes, out_dir, "ORACLE pool (right labels first): " if oracle else "")
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


def write_mechanism(samples: pd.DataFrame, classes: list[str], prototypes: np.ndarray, out_dir: Path,
                    mark: str) -> None:
    """mechanism.csv (diagnostics.mechanism_table), prototype_cosine.csv, and mechanism.png: precision
    by certainty decile, pool against outside precision per class, the prototypes' cosines."""
    table = mechanism_table(samples, classes)
    with atomic_path(out_dir / "mechanism.csv") as tmp:
        table.to_csv(tmp, index=False)
    cosine = pd.DataFrame(prototypes @ prototypes.T, index=classes, columns=classes)
    with atomic_path(out_dir / "prototype_cosine.csv") as tmp:
        cosine.to_csv(tmp)

    fig = new_figure(figsize=(15, 4.2))
    ax_decile, ax_pool, ax_cos = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    deciles = [c for c in table.columns if c.startswith("precision_d")]
    for _, row in table.iterrows():
        overall = row["class"] == "all"
        ax_decile.plot(range(1, len(deciles) + 1), row[deciles].to_numpy(float), color="black" if overall else None,
                       lw=2.5 if overall else 1, label=f"{row['class']} (AUROC {row['auroc']:.2f})")
    ax_decile.set(xlabel="certainty decile within the class (10: most certain)", ylabel="label = GT (fraction)",
                  title=f"{mark}precision by certainty: should rise", ylim=(0, 1.02))
    ax_decile.legend(fontsize=6, ncol=2)
    per_class = table[table["class"] != "all"]
    x = np.arange(len(per_class))
    ax_pool.bar(x - 0.2, per_class["pool_precision"], 0.4, label="in the pool")
    ax_pool.bar(x + 0.2, per_class["outside_precision"], 0.4, label="outside the pool")
    for xi, share in zip(x, per_class["pool_share"]):
        ax_pool.annotate(f"{100 * share:.0f}%", (xi, 0.02), ha="center", fontsize=6, color="white")
    ax_pool.set_xticks(x, per_class["class"], rotation=45, ha="right", fontsize=7)
    ax_pool.set(ylabel="label = GT (fraction)", ylim=(0, 1.02),
                title=f"{mark}per class: pool more precise? (white: share of the pool)")
    ax_pool.legend(fontsize=7, loc="upper right")
    image = ax_cos.imshow(cosine.to_numpy(), vmin=-1, vmax=1, cmap="coolwarm")
    ax_cos.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
    ax_cos.set_yticks(range(len(classes)), classes, fontsize=6)
    ax_cos.set_title("cosine between class prototypes (decoder space)", fontsize=9)
    fig.colorbar(image, ax=ax_cos, fraction=0.046)
    _save(fig, out_dir / "mechanism.png")


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.1f}%"


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=110)
