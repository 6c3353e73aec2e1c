"""One table over every stage and variant (CSV + Markdown), a bar plot of the variants, training curves.

Rows, by ``stage``:
- ``cam``: CAM mIoU at the best background threshold of the eval_cam sweep;
- ``pseudo_labels``: mIoU, precision and coverage of each refinement's pseudo labels;
- ``segmentation``: val mIoU of each variant, single scale and multi-scale (+ CRF when run);
- one row per Snakemake benchmark file ``<rule>[-<wildcards>].tsv``: its wall-clock seconds
  (mean of the ``s`` column when a rule was benchmarked repeatedly) under ``stage`` = the rule and
  ``name`` = the wildcard values ("-" for a rule without wildcards).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from stages.io.atomic import atomic_path, write_text

COLUMNS = ["stage", "name", "miou", "miou_multiscale", "miou_multiscale_crf", "precision", "coverage",
           "threshold", "seconds"]
SEG_MODE_COLUMNS = {"single": "miou", "multiscale": "miou_multiscale", "multiscale+crf": "miou_multiscale_crf"}
MODE_LABELS = {"miou": "single scale", "miou_multiscale": "multi-scale + flip",
               "miou_multiscale_crf": "multi-scale + flip + CRF"}
NOT_CURVES = {"step", "epoch", "lr", "img_per_s", "skipped"}  # training-metrics columns that are not losses


def named_paths(values: Sequence[str], flag: str) -> dict[str, Path]:
    """``NAME=PATH`` arguments as an ordered mapping; names must be unique."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} {value!r}: expected NAME=PATH")
        if name in out:
            raise ValueError(f"{flag}: name {name!r} given twice")
        out[name] = Path(path)
    return out


def read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")
    return frame


def cam_row(best_json: Path) -> dict:
    try:
        best = json.loads(best_json.read_text())
        return {"stage": "cam", "name": "cam", "miou": float(best["miou"]), "threshold": float(best["threshold"])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{best_json}: not an eval_cam best-threshold JSON ({exc})") from exc


def pseudo_rows(summaries: dict[str, Path]) -> list[dict]:
    rows = []
    for name, path in summaries.items():
        row = read_csv(path, ["miou", "precision", "coverage"]).iloc[0]
        rows.append({"stage": "pseudo_labels", "name": name, "miou": row["miou"],
                     "precision": row["precision"], "coverage": row["coverage"]})
    return rows


def variant_rows(metrics: dict[str, Path]) -> list[dict]:
    rows = []
    for name, path in metrics.items():
        frame = read_csv(path, ["mode", "miou"])
        unknown = set(frame["mode"]) - SEG_MODE_COLUMNS.keys()
        if unknown:
            raise ValueError(f"{path}: unknown evaluation mode(s) {sorted(unknown)}")
        rows.append({"stage": "segmentation", "name": name,
                     **{SEG_MODE_COLUMNS[m]: v for m, v in zip(frame["mode"], frame["miou"])}})
    return rows


def benchmark_rows(directory: Path) -> list[dict]:
    """Seconds per Snakemake benchmark file; the rule is the file name up to the first '-'."""
    if not directory.is_dir():
        print(f"no benchmark folder {directory}: the table has no timings", file=sys.stderr)
        return []
    rows = []
    for path in sorted(directory.rglob("*.tsv")):  # a wildcard value may hold a '/'
        rule, _, wildcards = path.relative_to(directory).with_suffix("").as_posix().partition("-")
        rows.append({"stage": rule, "name": wildcards or "-", "seconds": benchmark_seconds(path)})
    return rows


def benchmark_seconds(path: Path) -> float:
    frame = pd.read_csv(path, sep="\t")
    if "s" not in frame.columns or frame.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (needs a column 's' and a row)")
    return float(frame["s"].mean())


def summary_table(cam_best: Path, pseudo: dict[str, Path], variants: dict[str, Path],
                  benchmarks: Path) -> pd.DataFrame:
    rows = [cam_row(cam_best), *pseudo_rows(pseudo), *variant_rows(variants), *benchmark_rows(benchmarks)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.dropna(axis=1, how="all")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub table: scores to 4 decimals, seconds to 1, empty cells where a row has no value."""
    def cell(column: str, value) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row)) + " |")
    return "\n".join(lines) + "\n"


def save_figure(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_variants(table: pd.DataFrame, path: Path) -> None:
    """Grouped bars: one group per variant, one bar per evaluation mode; the CAM score as a line."""
    seg = table[table["stage"] == "segmentation"]
    modes = [c for c in SEG_MODE_COLUMNS.values() if c in seg.columns and seg[c].notna().any()]
    fig = Figure(figsize=(max(4.0, 1.5 * len(seg) + 2), 3.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(modes))
    for k, column in enumerate(modes):
        ax.bar([i + k * width for i in range(len(seg))], seg[column], width, label=MODE_LABELS[column])
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(seg))], seg["name"])
    cam = table.loc[table["stage"] == "cam", "miou"]
    if len(cam):
        ax.axhline(cam.iloc[0], color="gray", linestyle="--", label="CAM (best threshold)")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(curves: dict[str, Path], path: Path) -> None:
    """One panel per training run: every loss term against the step."""
    fig = Figure(figsize=(4.5 * max(1, len(curves)), 3.2))
    axes = fig.subplots(1, max(1, len(curves)), squeeze=False)[0]
    for ax, (name, csv) in zip(axes, curves.items()):
        frame = read_csv(csv, ["step", "loss"])
        for column in [c for c in frame.columns if c not in NOT_CURVES]:
            ax.plot(frame["step"], frame[column], label=column, linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cam-sweep-best", type=Path, required=True, help="eval_cam best.json")
    p.add_argument("--pseudo", nargs="+", default=[], metavar="NAME=CSV", help="eval_pseudo summaries")
    p.add_argument("--variant", nargs="+", default=[], metavar="NAME=CSV", help="evaluate metrics")
    p.add_argument("--train-metrics", nargs="+", default=[], metavar="NAME=CSV", help="training metrics")
    p.add_argument("--benchmarks", type=Path, required=True, help="folder of Snakemake benchmark TSVs")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-plot-variants", type=Path, required=True)
    p.add_argument("--out-plot-curves", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    table = summary_table(args.cam_sweep_best, named_paths(args.pseudo, "--pseudo"),
                          named_paths(args.variant, "--variant"), args.benchmarks)
    plot_variants(table, args.out_plot_variants)
    plot_curves(named_paths(args.train_metrics, "--train-metrics"), args.out_plot_curves)
    write_text(args.out_md, to_markdown(table))
    with atomic_path(args.out_csv) as tmp:
        table.to_csv(tmp, index=False)
    print(to_markdown(table), file=sys.stderr)


if __name__ == "__main__":
    main()
