"""Per-class IoU of each variant's pseudo labels beside that of its predictions.

The mean hides a class that the pseudo labels find but the trained segmenter no longer predicts:
such a class is flagged "vanished". A segmenter that predicts one class almost everywhere (the
share of pixels in evaluate's class histogram) is named "collapsed"; one that calls every object
by one class while the masks hold several is named for that too, since a dominant background hides
it from the first test (VOC's 20 classes, RSS's image-level rewards). Pseudo labels are scored on
the CAM evaluation split with ignored pixels as background (eval_pseudo's ``iou``, comparable with
a prediction's IoU, which ignores nothing); predictions on the evaluation split at single scale
(evaluate's ``single``), the segmenter without test-time help.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.errors import InputError
from stages.reporting.tables import read_csv, to_markdown

VANISHED_PRED = 0.05  # prediction IoU below this ...
VANISHED_PSEUDO = 0.2  # ... while the pseudo labels reached this: training lost the class
PRED_MODE = "single"
COLLAPSED_SHARE = 0.9  # one class predicted on this share of the pixels ...
COLLAPSED_EXCESS = 0.1  # ... and on this much more than the ground truth has of it: a collapse
PREDICTED_SHARE = 0.001  # a class counts as predicted above this share of the pixels
LONG_COLUMNS = ["variant", "class", "pseudo_iou", "pred_iou", "pred_share", "gt_share", "vanished"]


def class_iou(path: Path, column: str) -> pd.Series:
    """IoU per class name, in the file's class order."""
    frame = read_csv(path, ["class", column])
    return frame.set_index("class")[column].astype(float)


def variant_rows(variant: str, pred_csv: Path, pseudo_csv: Path | None) -> pd.DataFrame:
    pred = class_iou(pred_csv, PRED_MODE)
    shares = pd.read_csv(pred_csv).set_index("class").reindex(pred.index)  # NaN in files before histograms
    pseudo = pd.Series(float("nan"), index=pred.index)
    if pseudo_csv is not None:
        pseudo = class_iou(pseudo_csv, "iou")
        if set(pseudo.index) != set(pred.index):
            raise InputError(f"{pseudo_csv} and {pred_csv}: different classes "
                             f"({sorted(pseudo.index)} vs {sorted(pred.index)})")
    return pd.DataFrame({"variant": variant, "class": pred.index,
                         "pseudo_iou": pseudo.reindex(pred.index).to_numpy(), "pred_iou": pred.to_numpy(),
                         "pred_share": shares.get("pred_share", float("nan")),
                         "gt_share": shares.get("gt_share", float("nan"))}).reset_index(drop=True)


def per_class_long(pred: dict[str, Path], pseudo: dict[str, Path], labels: dict[str, str]) -> pd.DataFrame:
    """One row per variant and class. ``pred``: evaluate's per_class.csv per variant; ``pseudo``:
    eval_pseudo's per_class.csv per refinement; ``labels``: the refinement each variant trains on
    (a variant absent from it, e.g. one trained on scribbles, gets no ``pseudo_iou``)."""
    unknown = sorted(labels.keys() - pred.keys())
    if unknown:
        raise InputError(f"pseudo labels named for variant(s) {unknown} without per-class predictions")
    frames = []
    for variant, pred_csv in pred.items():
        refinement = labels.get(variant)
        if refinement is not None and refinement not in pseudo:
            raise InputError(f"variant {variant}: no per-class CSV of its pseudo labels {refinement!r}")
        frames.append(variant_rows(variant, pred_csv, None if refinement is None else pseudo[refinement]))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LONG_COLUMNS[:-1], dtype=float)
    table["vanished"] = (table["pred_iou"] < VANISHED_PRED) & (table["pseudo_iou"] > VANISHED_PSEUDO)
    return table


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per class; per variant ``<variant> pseudo`` (when it has pseudo labels) and
    ``<variant> pred``; ``vanished in``: the variants that lost the class."""
    classes = list(dict.fromkeys(long["class"]))
    wide = pd.DataFrame({"class": classes})
    for variant, rows in long.groupby("variant", sort=False):
        rows = rows.set_index("class").reindex(classes)
        if rows["pseudo_iou"].notna().any():
            wide[f"{variant} pseudo"] = rows["pseudo_iou"].to_numpy()
        wide[f"{variant} pred"] = rows["pred_iou"].to_numpy()
    lost = long[long["vanished"]]
    wide["vanished in"] = [", ".join(lost.loc[lost["class"] == c, "variant"]) for c in classes]
    return wide


def vanished_lines(long: pd.DataFrame) -> list[str]:
    """Per variant, the classes it lost, so a reader need not scan the table."""
    lines = []
    for variant, rows in long.groupby("variant", sort=False):
        if rows["pseudo_iou"].isna().all():
            lines.append(f"- {variant}: no pseudo labels to compare with")
        else:
            lines.append(f"- {variant}: {', '.join(rows.loc[rows['vanished'], 'class']) or 'none'}")
    return lines


def is_collapse(pred_share: float, gt_share: float) -> bool:
    """One class on nearly all of the pixels counted, well above what the masks give it."""
    return pred_share >= COLLAPSED_SHARE and pred_share - gt_share >= COLLAPSED_EXCESS


def foreground_collapse(rows: pd.DataFrame) -> str:
    """The histogram line's clause for one foreground class on nearly all of the predicted
    foreground while the masks show at least two ("" otherwise). ``rows``: one variant's, class 0
    (background, stages.data.index) first."""
    fg = rows.iloc[1:]
    pred_total, gt_total = fg["pred_share"].sum(), fg["gt_share"].sum()
    if pred_total <= PREDICTED_SHARE or (fg["gt_share"] > PREDICTED_SHARE).sum() < 2:
        return ""
    top = fg.loc[fg["pred_share"].idxmax()]
    pred, gt = top.pred_share / pred_total, top.gt_share / gt_total
    if not is_collapse(pred, gt):
        return ""
    return (f"; **ONE FOREGROUND CLASS**: {top['class']} on {pred:.0%} of the predicted foreground "
            f"(ground truth {gt:.0%})")


def histogram_lines(long: pd.DataFrame) -> list[str]:
    """Per variant, its most predicted class against the ground truth's share of it, and how many
    classes it predicts at all; "COLLAPSED" when one class takes nearly every pixel, "ONE FOREGROUND
    CLASS" when one takes nearly all of the predicted foreground."""
    lines = []
    for variant, rows in long.groupby("variant", sort=False):
        if rows["pred_share"].isna().all():
            continue
        top = rows.loc[rows["pred_share"].idxmax()]
        predicted = int((rows["pred_share"] > PREDICTED_SHARE).sum())
        present = int((rows["gt_share"] > PREDICTED_SHARE).sum())
        collapsed = is_collapse(top.pred_share, top.gt_share)
        lines.append(f"- {variant}: {'**COLLAPSED** to ' if collapsed else ''}{top['class']} on "
                     f"{top.pred_share:.0%} of the pixels (ground truth {top.gt_share:.0%}); "
                     f"{predicted} of the {present} classes present predicted"
                     + ("" if collapsed else foreground_collapse(rows)))
    return lines


def per_class_markdown(long: pd.DataFrame, cam_split: str, seg_split: str) -> str:
    """summary.md's per-class section: the side-by-side table, then the vanished classes."""
    if long.empty:
        return ""
    histogram = histogram_lines(long)
    return (f"\n## Per-class IoU\n\n`pseudo`: the variant's pseudo labels on the {cam_split} split (ignored "
            f"pixels as background); `pred`: its segmenter on the {seg_split} split, single scale. A class "
            f"vanished where pred < {VANISHED_PRED} while pseudo > {VANISHED_PSEUDO}.\n\n"
            + to_markdown(wide_table(long))
            + "\nVanished classes:\n\n" + "\n".join(vanished_lines(long)) + "\n"
            + (f"\nClass histogram of the predictions ({seg_split}, single scale):\n\n" + "\n".join(histogram)
               + "\n" if histogram else ""))
