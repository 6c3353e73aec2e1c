"""The segmenter's budget curve: val and train mIoU against training steps, one curve per setting.

Variants that differ only in their steps form one curve (the rule groups them). Each point is scored
on the held-out split and on the images the segmenter was fitted on (``evaluation.fit``), beside the
train mIoU of the pseudo labels it learnt from. Read together they say whether the labels or the
budget bound a result: a segmenter that reproduces its labels on its own training images is bounded
by the labels; one that stays below them even on ground-truth masks (an ORACLE curve) is bounded by
the budget and the data. ``train_fg_ratio`` (predicted foreground over true foreground on the
fitted images), beside its labels' own (``labels_fg_ratio``), names a bias the mIoU hides: a
segmenter drifts toward its labels' systematic errors, e.g. the foreground PL-Mix's labels spread
into the background.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from stages.errors import InputError, run_stage
from stages.io.atomic import atomic_path
from stages.io.named_args import named_paths, named_values
from stages.reporting.figures import new_figure, save_png
from stages.reporting.tables import read_csv, to_markdown

COLUMNS = ["curve", "variant", "steps", "val_miou", "train_miou", "train_fg_ratio", "labels_train_miou",
           "labels_fg_ratio"]


def single_scale(path: Path) -> pd.Series:
    """The single-scale row (the mode every evaluation scores) of an `evaluate` metrics file."""
    frame = read_csv(path, ["mode", "miou", "fg_ratio"])
    rows = frame[frame["mode"] == "single"]
    if rows.empty:
        raise InputError(f"{path}: no 'single' row")
    return rows.iloc[0]


def parse_points(values: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``VARIANT=CURVE:STEPS`` -> {variant: (curve, steps)}."""
    points = {}
    for variant, spec in named_values(values, "--point", "VARIANT=CURVE:STEPS").items():
        curve, _, steps = spec.rpartition(":")
        if not curve or not steps.isdigit():
            raise InputError(f"--point {variant}={spec}: expected VARIANT=CURVE:STEPS")
        points[variant] = (curve, int(steps))
    return points


def budget_table(points: dict[str, tuple[str, int]], val: dict[str, Path], fit: dict[str, Path],
                 labels: dict[str, Path]) -> pd.DataFrame:
    """One row per variant, sorted by curve and steps; the ``labels_`` columns are empty for curves
    whose labels are not pseudo labels (masks, scribbles)."""
    missing = sorted(set(points) - (set(val) & set(fit)))
    if missing:
        raise InputError(f"no --val or --fit file for {', '.join(missing)}")
    label_rows = {curve: read_csv(path, ["miou", "fg_ratio"]).iloc[0] for curve, path in labels.items()}
    rows = []
    for variant, (curve, steps) in points.items():
        fitted, label = single_scale(fit[variant]), label_rows.get(curve, {})
        rows.append({"curve": curve, "variant": variant, "steps": steps,
                     "val_miou": float(single_scale(val[variant])["miou"]), "train_miou": float(fitted["miou"]),
                     "train_fg_ratio": float(fitted["fg_ratio"]),
                     "labels_train_miou": float(label.get("miou", float("nan"))),
                     "labels_fg_ratio": float(label.get("fg_ratio", float("nan")))})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["curve", "steps"], ignore_index=True)


def plot_budget(table: pd.DataFrame, path: Path) -> None:
    """mIoU against steps (log scale): solid val, dashed train, dotted the labels' train mIoU."""
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, (curve, rows) in enumerate(table.groupby("curve", sort=True)):
        colour = f"C{i % 10}"
        ax.plot(rows["steps"], rows["val_miou"], "o-", color=colour, label=f"{curve}: val")
        ax.plot(rows["steps"], rows["train_miou"], "s--", color=colour, label=f"{curve}: train (fitted images)")
        labels = rows["labels_train_miou"].dropna()
        if not labels.empty:
            ax.axhline(labels.iloc[0], color=colour, linestyle=":", label=f"{curve}: its pseudo labels (train)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["steps"].unique()), [str(s) for s in sorted(table["steps"].unique())])
    ax.set_xlabel("segmenter training steps")
    ax.set_ylabel("mIoU (single scale)")
    ax.set_title("Budget curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_png(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--point", nargs="+", required=True, metavar="VARIANT=CURVE:STEPS")
    p.add_argument("--val", nargs="+", required=True, metavar="VARIANT=CSV", help="evaluate metrics, held-out split")
    p.add_argument("--fit", nargs="+", required=True, metavar="VARIANT=CSV", help="evaluate metrics, fitted images")
    p.add_argument("--labels", nargs="*", default=[], metavar="CURVE=CSV",
                   help="eval_pseudo summary of the pseudo labels a curve learns from")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    table = budget_table(parse_points(args.point), named_paths(args.val, "--val"), named_paths(args.fit, "--fit"),
                         named_paths(args.labels, "--labels"))
    with atomic_path(args.out_csv) as tmp:
        table.to_csv(tmp, index=False)
    plot_budget(table, args.out_png)
    print(to_markdown(table), file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
