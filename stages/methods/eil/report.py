"""What EIL shows the user: label precision and coverage per round, and label maps across rounds.

Quality is measured against ground truth on the images of the ``train`` split (the field's
pseudo-label split) that the method trains on. Ground truth is read for this report only; it
never reaches training. Precision = labelled pixels that agree with GT / labelled pixels where GT
is known; coverage = labelled pixels / pixels where GT is known (GT 255 pixels count in neither).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.io.atomic import atomic_path
from stages.io.label_png import IGNORE, colorize, read_label, write_label
from stages.reporting.figures import new_figure, save_png

REPORT_SPLIT = "train"


def report_ids(index: DatasetIndex, training_ids: list[str]) -> list[str]:
    """Ids of the report split that the method trains on and that have a GT mask."""
    if REPORT_SPLIT not in index.splits:
        return []
    training = set(training_ids)
    return [i for i in index.ids(REPORT_SPLIT)
            if i in training and index.mask_path(i, REPORT_SPLIT).is_file()]


def label_quality(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Precision and coverage of label maps against GT, pooled over (label, gt) pairs."""
    correct = labelled = known = 0
    for label, gt in pairs:
        valid = gt != IGNORE
        mine = (label != IGNORE) & valid
        correct += int((label[mine] == gt[mine]).sum())
        labelled += int(mine.sum())
        known += int(valid.sum())
    return {"precision": correct / labelled if labelled else float("nan"),
            "coverage": labelled / known if known else float("nan")}


def quality_of(index: DatasetIndex, ids: list[str], label_of: Callable[[str], np.ndarray]) -> dict[str, float]:
    return label_quality((label_of(i), read_label(index.mask_path(i, REPORT_SPLIT))) for i in ids)


MECHANISM_LINES = (  # (column, label, style) of the mechanism panel: correlations per round
    ("reward_precision_spearman", "reward vs true precision change (Spearman)", "o-"),
    ("q_reward_corr_before", "Q vs fresh reward, before the round's updates", "s--"),
    ("q_reward_corr", "Q vs fresh reward, after", "s-"))
PRECISION_LINES = (  # the precision of what each kind of proposal adds
    ("adopted_precision", "adopted proposals", "o-"), ("rejected_precision", "rejected proposals", "x--"),
    ("proposal_precision", "the policy's proposals", "s-"), ("random_precision", "random, same coverage", "d:"))


def _panel(ax, table: pd.DataFrame, lines, title: str, ylim: tuple[float, float]) -> None:
    for column, label, style in lines:
        if column in table and table[column].notna().any():
            ax.plot(table["round"], table[column], style, label=label)
    ax.set_xlabel("round (0 = scribbles)")
    ax.set_ylim(*ylim)
    ax.set_xticks(table["round"])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def write_table(rows: list[dict], out_dir: Path) -> None:
    """rounds.csv and rounds.png: precision and coverage of the labels after each round and, where
    the rounds measured them (``diagnostics``), the mechanism's correlations and the precision of
    adopted, rejected, the policy's and random proposals' additions."""
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "rounds.csv") as tmp:
        table.to_csv(tmp, index=False)
    panels = [((("precision", "precision", "o-"), ("coverage", "coverage", "s--")),
               f"labels against GT ({REPORT_SPLIT} split)", (0, 1.02))]
    if "proposals" in table:
        panels += [(MECHANISM_LINES, "does the signal track label quality?", (-1.02, 1.02)),
                   (PRECISION_LINES, "precision of the pixels proposals add", (0, 1.02))]
    fig = new_figure(figsize=(4.6 * len(panels), 3.4))
    for ax, (lines, title, ylim) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _panel(ax, table, lines, title, ylim)
    fig.tight_layout()
    save_png(fig, out_dir / "rounds.png")


def write_label_maps(index: DatasetIndex, ids: list[str], maps: list[Callable[[str], np.ndarray]],
                     out_dir: Path) -> None:
    """Each round's label map of a few images as palette PNGs (labels_round<r>_<id>.png), and
    one panel: image, the map after each round (round 0 = scribbles), ground truth."""
    if not ids:
        return
    columns = len(maps) + 2
    fig = new_figure(figsize=(1.8 * columns, 1.8 * len(ids)))
    axes = fig.subplots(len(ids), columns, squeeze=False)
    for row, image_id in enumerate(ids):
        panels = [load_rgb(index.image_path(image_id))]
        for r, label_of in enumerate(maps):
            label = label_of(image_id)
            write_label(out_dir / f"labels_round{r}_{image_id}.png", label)
            panels.append(colorize(label))
        panels.append(colorize(read_label(index.mask_path(image_id, REPORT_SPLIT))))
        titles = ["image", "scribbles", *(f"round {r}" for r in range(1, len(maps))), "GT"]
        for ax, panel, title in zip(axes[row], panels, titles):
            ax.imshow(panel)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_png(fig, out_dir / "rounds_labels.png")
