"""One table over every stage and variant (CSV + Markdown), a bar plot of the variants, training curves.

summary.md adds per-class IoU side by side (stages/reporting/per_class.py, also written as a long CSV)
and the methods' own reports (stages/reporting/diagnostics.py).

Rows of the table, by ``stage``, each with the ``split`` it was measured on:
- ``cam``: CAM mIoU at the best background threshold of the eval_cam sweep;
- ``refine``: one row per PL-Mix round, the refined network's CAM mIoU at its best threshold;
- ``pseudo_labels``: per refinement, ``miou`` with ignored (255) pixels counted as background (the
  field's figure), ``miou_labelled`` over labelled pixels only, precision and coverage;
- ``segmentation``: mIoU of each variant, single scale and multi-scale (+ CRF when run), and what
  it learnt from (``supervision``: pseudo labels, scribbles with their density, GT masks for
  ORACLE rows), so rows of different supervision are not read as equals;
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

from stages.errors import InputError, run_stage
from stages.io.atomic import atomic_path, write_text
from stages.io.named_args import named_paths, named_values
from stages.reporting.diagnostics import EIL_ROUNDS, diagnostics_markdown
from stages.reporting.figures import new_figure, save_png
from stages.reporting.per_class import per_class_long, per_class_markdown
from stages.reporting.tables import read_csv, to_markdown

COLUMNS = ["stage", "name", "split", "supervision", "miou", "miou_labelled", "miou_multiscale",
           "miou_multiscale_crf", "precision", "coverage", "fg_ratio", "threshold", "seconds"]
SEG_MODE_COLUMNS = {"single": "miou", "multiscale": "miou_multiscale", "multiscale+crf": "miou_multiscale_crf"}
MODE_LABELS = {"miou": "single scale", "miou_multiscale": "multi-scale + flip",
               "miou_multiscale_crf": "multi-scale + flip + CRF"}
NOT_CURVES = {"step", "epoch", "img_per_s", "skipped"}  # training-metrics columns that are not losses
# (nor are the learning rates: ``lr`` and ``lr_*``), nor spreads that a method plots itself (RSS's
# per-scale reward std and advantage statistics, in its rss_curves.png)
DETAIL_PREFIXES = ("lr_", "reward_std_", "adv_")
NOTES = {  # summary.md's key to the columns, for those the table has
    "split": "the split every score of the row was measured on",
    "supervision": "what a segmenter learnt from; for scribbles, the share of pixels they label (of the pixels "
                   "with ground truth on the train images the variant trains on)",
    "miou": "pseudo labels: an ignored (255) pixel counts as background, as in IRN's evaluation and "
            "the papers; this is the figure to compare with published ones. cam, refine: at the "
            "best background threshold (`threshold`). segmentation: single scale",
    "miou_labelled": "pseudo labels: labelled pixels only (255 skipped); abstaining raises it, so read "
                     "it with `coverage`. Not comparable with published pseudo-label mIoU",
    "miou_multiscale": "segmentation: multi-scale + flip",
    "miou_multiscale_crf": "segmentation: multi-scale + flip, then dense CRF",
    "precision": "pseudo labels: pixel accuracy over labelled pixels",
    "coverage": "pseudo labels: share of valid ground-truth pixels that received a label",
    "fg_ratio": "foreground labelled (pseudo labels, ignored pixels as background) or predicted (segmentation, "
                "single scale) over the true foreground: above 1 spreads into the background, below 1 misses "
                "objects; a segmenter learns its labels' bias",
    "threshold": "background score of the best CAM threshold",
    "seconds": "wall time of the rule's job (`stage` = rule, `name` = its wildcards), from Snakemake's "
               "benchmark files",
}


def cam_rows(bests: dict[str, Path], split: str) -> list[dict]:
    """One row per CAM file's sweep: the raw CAMs (``cam``) and each refinement's own."""
    rows = []
    for name, best_json in bests.items():
        try:
            best = json.loads(best_json.read_text())
            rows.append({"stage": "cam", "name": name, "split": split, "miou": float(best["miou"]),
                         "threshold": float(best["threshold"])})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{best_json}: not an eval_cam best-threshold JSON ({exc})") from exc
    return rows


def refine_rows(rounds: dict[str, Path], split: str) -> list[dict]:
    """One row per finished PL-Mix round (round 0, the raw CAMs, is the ``cam`` row)."""
    rows = []
    for name, path in rounds.items():
        frame = read_csv(path, ["round", "eval_threshold", "eval_miou"])
        rows += [{"stage": "refine", "name": f"{name} round {int(r['round'])}", "split": split,
                  "miou": r["eval_miou"], "threshold": r["eval_threshold"]}
                 for _, r in frame[frame["round"] > 0].iterrows()]
    return rows


def pseudo_rows(summaries: dict[str, Path], split: str) -> list[dict]:
    rows = []
    for name, path in summaries.items():
        if "miou_labelled" not in pd.read_csv(path, nrows=0).columns:
            raise InputError(f"{path}: no miou_labelled column: made by an older eval_pseudo, whose miou "
                             f"skipped ignored pixels; re-run it (snakemake --forcerun eval_pseudo)")
        row = read_csv(path, ["miou", "miou_labelled", "precision", "coverage"]).iloc[0]
        rows.append({"stage": "pseudo_labels", "name": name, "split": split, "miou": row["miou"],
                     "miou_labelled": row["miou_labelled"], "precision": row["precision"],
                     "coverage": row["coverage"], "fg_ratio": row.get("fg_ratio")})  # older files: none
    return rows


def scribble_density(outputs: Path | None) -> float | None:
    """The scribbles' coverage (round 0 of EIL's rounds.csv), where the variant has one."""
    path = None if outputs is None else outputs / EIL_ROUNDS
    if path is None or not path.is_file():
        return None
    frame = read_csv(path, ["round", "coverage"])
    first = frame[frame["round"] == 0]
    return None if first.empty else float(first["coverage"].iloc[0])


def supervision_labels(supervision: dict[str, str], outputs: dict[str, Path]) -> dict[str, str]:
    """Each variant's supervision, scribbles with their density when measured."""
    labels = {}
    for name, text in supervision.items():
        density = scribble_density(outputs.get(name)) if text.startswith("scribbles") else None
        labels[name] = text if density is None else f"{text}, {100 * density:.1f}% of pixels"
    return labels


def variant_rows(metrics: dict[str, Path], split: str, supervision: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for name, path in metrics.items():
        frame = read_csv(path, ["mode", "miou"])
        unknown = set(frame["mode"]) - SEG_MODE_COLUMNS.keys()
        if unknown:
            raise InputError(f"{path}: unknown evaluation mode(s) {sorted(unknown)}")
        single = frame[frame["mode"] == "single"]
        fg_ratio = single["fg_ratio"].iloc[0] if "fg_ratio" in frame and not single.empty else None
        rows.append({"stage": "segmentation", "name": name, "split": split,
                     "supervision": (supervision or {}).get(name), "fg_ratio": fg_ratio,
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
        raise InputError(f"{path}: not a Snakemake benchmark file (needs a column 's' and a row)")
    return float(frame["s"].mean())


def summary_table(cam_best: dict[str, Path], pseudo: dict[str, Path], variants: dict[str, Path], benchmarks: Path,
                  rounds: dict[str, Path] | None = None, *, cam_split: str, seg_split: str,
                  supervision: dict[str, str] | None = None) -> pd.DataFrame:
    """``cam_split``: where CAMs, rounds and pseudo labels were scored; ``seg_split``: the segmenters."""
    rows = [*cam_rows(cam_best, cam_split), *refine_rows(rounds or {}, cam_split), *pseudo_rows(pseudo, cam_split),
            *variant_rows(variants, seg_split, supervision), *benchmark_rows(benchmarks)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.dropna(axis=1, how="all")


def summary_markdown(table: pd.DataFrame) -> str:
    """summary.md: the table, then what each of its score columns means."""
    notes = [f"- `{c}`: {NOTES[c]}." for c in table.columns if c in NOTES]
    return ("# Summary\n\nEvery image, its CAMs, pseudo labels and predictions: the results browser, "
            "[results/browse/index.html](../browse/index.html).\n\n"
            + to_markdown(table) + "\nColumns:\n\n" + "\n".join(notes) + "\n")


def _split_of(rows: pd.DataFrame) -> str:
    splits = sorted(set(rows["split"].dropna())) if "split" in rows else []
    return "/".join(splits) or "?"


def _bars(ax, groups: Sequence[str], series: dict[str, Sequence[float]], colors: Sequence[str],
          hatches: Sequence[str] = ()) -> None:
    """Grouped bars (one group per name, one bar per series that has a value there, centred on
    the group's tick) with their values written on top."""
    values = [[float(v) for v in column] for column in series.values()]
    width = 0.8 / max(1, len(series))
    for k, (label, column) in enumerate(zip(series, values)):
        x, heights = [], []
        for i in range(len(groups)):
            present = [j for j in range(len(values)) if not math.isnan(values[j][i])]
            if k in present:
                x.append(i + (present.index(k) - (len(present) - 1) / 2) * width)
                heights.append(column[i])
        bars = ax.bar(x, heights, width, label=label, color=colors[k], edgecolor="white",
                      hatch=hatches[k] if k < len(hatches) else None)
        ax.bar_label(bars, fmt="%.3f", fontsize="x-small", padding=1)
    ax.set_xticks(range(len(groups)), groups)


def scored_rows(table: pd.DataFrame, stages: Sequence[str]) -> pd.DataFrame:
    """The rows of ``stages`` that hold a score: a rule's timing row may share a stage's name
    (the pseudo_labels rule's time beside the pseudo labels' mIoU) and has no bar to draw."""
    return table[table["stage"].isin(stages) & table["miou"].notna()]


def plot_variants(table: pd.DataFrame, path: Path) -> None:
    """Two panels, one split each, so no figure of one split is drawn over bars of another:
    left, every variant's segmenter per evaluation mode; right, the CAMs and the pseudo labels
    of every refinement, the field's mIoU beside the mIoU of labelled pixels."""
    seg, labels = scored_rows(table, ["segmentation"]), scored_rows(table, ["cam", "pseudo_labels"])
    fig = new_figure(figsize=(max(8.0, 1.3 * (len(seg) + len(labels)) + 4), 4.0), layout="constrained")
    ax_seg, ax_labels = fig.subplots(1, 2, width_ratios=[max(1, len(seg)), max(1, len(labels))], sharey=True)

    modes = [c for c in SEG_MODE_COLUMNS.values() if c in seg.columns and seg[c].notna().any()]
    _bars(ax_seg, list(seg["name"]), {MODE_LABELS[c]: seg[c] for c in modes}, colors=("C0", "C1", "C4"))
    ax_seg.set_title(f"segmenters, {_split_of(seg)} split")
    ax_seg.set_xlabel("variant")
    if seg.empty:
        ax_seg.text(0.5, 0.5, "no variants", ha="center", va="center", transform=ax_seg.transAxes)

    groups = [("CAM" if n == "cam" else f"CAM\n{n}") if s == "cam" else f"pseudo labels\n{n}"
              for s, n in zip(labels["stage"], labels["name"])]
    series = {"mIoU (pseudo labels: 255 = background)": labels["miou"]}
    if "miou_labelled" in labels and labels["miou_labelled"].notna().any():
        series["mIoU of labelled pixels only"] = labels["miou_labelled"]
    _bars(ax_labels, groups, series, colors=("C2", "C2"), hatches=("", "//"))
    ax_labels.set_title(f"CAMs and pseudo labels, {_split_of(labels)} split")

    shown = [(seg, modes), (labels, [c for c in ("miou", "miou_labelled") if c in labels])]
    top = max((float(frame[c].max()) for frame, columns in shown for c in columns if frame[c].notna().any()),
              default=1.0)
    ax_seg.set_ylim(0, min(1.0, math.ceil(top * 14) / 10))  # (shared) room for the legends above the bars
    ax_seg.set_ylabel("mIoU")
    for ax in (ax_seg, ax_labels):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    save_png(fig, path)


def smoothing_window(steps: int) -> int:
    """Steps in the running mean of the curves: about a twentieth of the run, at least 1."""
    return max(1, min(100, steps // 20))


LINEAR_BELOW = 0.01  # symlog's linear band: a term at zero (a warm-up) stays on the plot


def wide_range(frame: pd.DataFrame) -> bool:
    """Whether the curves' typical sizes differ by more than 20x, so one linear axis flattens some."""
    sizes = frame.abs().median()
    sizes = sizes[sizes > LINEAR_BELOW]
    return len(sizes) > 1 and float(sizes.max() / sizes.min()) > 20


def plot_curves(curves: dict[str, Path], path: Path, rounds: dict[str, Path] | None = None,
                rounds_split: str = "?") -> None:
    """One panel per training run: every loss term against the step, raw (faint) and as a running
    mean; then one panel per PL-Mix refinement: the CAM mIoU after each round."""
    rounds = rounds or {}
    panels = max(1, len(curves) + len(rounds))
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig = new_figure(figsize=(4.8 * ncols, 3.4 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, (name, csv) in zip(axes, curves.items()):
        frame = read_csv(csv, ["step", "loss"])
        window = smoothing_window(len(frame))
        terms = [c for c in frame.columns if c not in NOT_CURVES and c != "lr" and not c.startswith(DETAIL_PREFIXES)]
        # a term equal to the total (a one-term loss) would hide under it: named in its label instead
        same = [c for c in terms if c != "loss" and frame[c].equals(frame["loss"])]
        for k, column in enumerate(c for c in terms if c not in same):
            label = f"loss (= {', '.join(same)})" if column == "loss" and same else column
            ax.plot(frame["step"], frame[column], color=f"C{k}", linewidth=0.6, alpha=0.3)
            ax.plot(frame["step"], frame[column].rolling(window, min_periods=1).mean(), color=f"C{k}",
                    linewidth=1.5, label=label)
        shown = [c for c in terms if c not in same]
        ax.set_title(f"{name}: training loss" + (" and the terms it logs" if len(shown) > 1 else ""))
        ax.set_xlabel("step")
        symlog = len(shown) > 1 and wide_range(frame[shown])  # terms of very different sizes (UGRL's)
        ax.set_ylabel("loss" if len(shown) == 1 else "value (symlog scale)" if symlog else "value")
        if symlog:
            ax.set_yscale("symlog", linthresh=LINEAR_BELOW)
        ax.legend(fontsize="x-small", title=f"mean of {window} steps (faint: each step)",
                  title_fontsize="x-small", framealpha=0.6)
    for ax, (name, csv) in zip(axes[len(curves):], rounds.items()):
        frame = read_csv(csv, ["round", "eval_threshold", "eval_miou"])
        ax.plot(frame["round"], frame["eval_miou"], marker="o", color="C3",
                label="mIoU at the best background\nthreshold t of each round")
        for r, miou, threshold in zip(frame["round"], frame["eval_miou"], frame["eval_threshold"]):
            ax.annotate(f"{miou:.3f}\nt={threshold:.2f}", (r, miou), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize="x-small")
        ax.set_xticks(list(frame["round"]))
        low, high = float(frame["eval_miou"].min()), float(frame["eval_miou"].max())
        span = max(high - low, 0.1)  # so that a change in the third decimal does not fill the panel
        ax.set_ylim(max(0.0, low - 0.3 * span), min(1.0, high + 0.6 * span))
        ax.legend(fontsize="small", loc="upper left")
        ax.set_title(f"{name}: CAMs after each PL-Mix round")
        ax.set_xlabel("round (0 = the CAMs before refinement)")
        ax.set_ylabel(f"CAM mIoU, {rounds_split} split")
    for ax in axes[len(curves) + len(rounds):]:
        ax.set_visible(False)
    save_png(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cam-best", nargs="+", required=True, metavar="NAME=JSON",
                   help="eval_cam best.json of each CAM file (cam = the raw CAMs, else the refinement)")
    p.add_argument("--pseudo", nargs="+", default=[], metavar="NAME=CSV", help="eval_pseudo summaries")
    p.add_argument("--variant", nargs="+", default=[], metavar="NAME=CSV", help="evaluate metrics")
    p.add_argument("--train-metrics", nargs="+", default=[], metavar="NAME=CSV", help="training metrics")
    p.add_argument("--refine-rounds", nargs="*", default=[], metavar="NAME=CSV",
                   help="PL-Mix rounds.csv of each refinement")
    p.add_argument("--pseudo-per-class", nargs="*", default=[], metavar="NAME=CSV",
                   help="eval_pseudo per_class.csv of each refinement")
    p.add_argument("--variant-per-class", nargs="+", default=[], metavar="NAME=CSV",
                   help="evaluate per_class.csv of each variant")
    p.add_argument("--variant-labels", nargs="*", default=[], metavar="VARIANT=REFINEMENT",
                   help="the refinement whose pseudo labels each variant trains on; a variant without is not listed")
    p.add_argument("--method-outputs", nargs="*", default=[], metavar="NAME=DIR",
                   help="each variant's outputs folder, where UGRL and EIL leave their reports")
    p.add_argument("--variant-supervision", nargs="*", default=[], metavar="NAME=TEXT",
                   help="what each variant learns from (the summary's supervision column)")
    p.add_argument("--cam-split", required=True,
                   help="split the CAMs, PL-Mix rounds and pseudo labels were scored on (cam.eval.split)")
    p.add_argument("--seg-split", required=True, help="split the segmenters were evaluated on")
    p.add_argument("--benchmarks", type=Path, required=True, help="folder of Snakemake benchmark TSVs")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-per-class", type=Path, required=True,
                   help="CSV: variant, class, pseudo_iou, pred_iou, vanished")
    p.add_argument("--out-plot-variants", type=Path, required=True)
    p.add_argument("--out-plot-curves", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rounds = named_paths(args.refine_rounds, "--refine-rounds")
    outputs = named_paths(args.method_outputs, "--method-outputs")
    supervision = supervision_labels(named_values(args.variant_supervision, "--variant-supervision", "NAME=TEXT"),
                                     outputs)
    table = summary_table(named_paths(args.cam_best, "--cam-best"), named_paths(args.pseudo, "--pseudo"),
                          named_paths(args.variant, "--variant"), args.benchmarks, rounds,
                          cam_split=args.cam_split, seg_split=args.seg_split, supervision=supervision)
    plot_variants(table, args.out_plot_variants)
    plot_curves(named_paths(args.train_metrics, "--train-metrics"), args.out_plot_curves, rounds, args.cam_split)
    per_class = per_class_long(named_paths(args.variant_per_class, "--variant-per-class"),
                               named_paths(args.pseudo_per_class, "--pseudo-per-class"),
                               named_values(args.variant_labels, "--variant-labels", "VARIANT=REFINEMENT"))
    with atomic_path(args.out_per_class) as tmp:
        per_class.to_csv(tmp, index=False)
    write_text(args.out_md, summary_markdown(table) + per_class_markdown(per_class, args.cam_split, args.seg_split)
               + diagnostics_markdown(outputs))
    with atomic_path(args.out_csv) as tmp:
        table.to_csv(tmp, index=False)
    print(to_markdown(table), file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
