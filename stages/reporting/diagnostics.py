"""The methods' own reports, condensed for summary.md: whether a method's mechanism did what it
claims, read beside the mIoU it gave.

A variant's outputs folder (``results/seg/<variant>/outputs``) may hold, by the method that wrote it:
- UGRL (stages/methods/ugrl/report.py): ``pool_precision.csv``, the share of reliable-pool and of all
  labelled pixels whose label agrees with ground truth, per step and in a ``total`` row;
  ``class_uncertainty.csv``, each class's uncertainty per step; ``mechanism.csv``, whether the
  certainty ranks label correctness (AUROC, precision of the most and least certain 20%) overall
  and per class;
- EIL (stages/methods/eil/report.py): ``rounds.csv``, label precision and coverage after each round.
A folder without these files (another method, or a run that wrote none) is skipped.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.errors import InputError
from stages.reporting.tables import read_csv, to_markdown

UGRL_POOL = "pool_precision.csv"
UGRL_UNCERTAINTY = "class_uncertainty.csv"
UGRL_MECHANISM = "mechanism.csv"
EIL_ROUNDS = "rounds.csv"
EIL_COLUMNS = [  # those shown, when present
    "round", "step", "precision", "coverage", "adopted", "reward_precision_spearman", "q_reward_corr",
    "adopted_precision", "rejected_precision", "proposal_precision", "random_precision"]
UNCERTAIN_SHOWN = 3  # classes named in UGRL's row
LATE_SHARE = 0.25  # "at the end": the last quarter of the steps


def most_uncertain(path: Path) -> str:
    """The classes of highest mean uncertainty over the last steps (a class absent from a step's
    batch has no value there), e.g. ``cat 0.41, dog 0.30``; empty without the file."""
    if not path.is_file():
        return ""
    u = pd.read_csv(path, index_col="step")
    late = u.tail(max(1, round(len(u) * LATE_SHARE))).mean().dropna()
    top = late.sort_values(ascending=False).head(UNCERTAIN_SHOWN)
    return ", ".join(f"{name} {value:.2f}" for name, value in top.items())


def ugrl_row(variant: str, folder: Path) -> dict | None:
    """Over the whole training: the reliable pool's precision beside that of all labelled pixels,
    and the pool's share of the labelled pixels (with ground truth)."""
    path = folder / UGRL_POOL
    if not path.is_file():
        return None
    frame = read_csv(path, ["step", "pool_known", "labelled_known", "pool_precision", "labelled_precision"])
    frame = frame.set_index(frame["step"].astype(str))
    if "total" not in frame.index:
        raise InputError(f"{path}: no 'total' row (written by stages/methods/ugrl/report.py)")
    total = frame.loc["total"]
    known = float(total["labelled_known"])
    return {"variant": variant, "steps": len(frame) - 1, "pool_precision": float(total["pool_precision"]),
            "labelled_precision": float(total["labelled_precision"]),
            "pool_share": float(total["pool_known"]) / known if known > 0 else float("nan"),
            **ranking(folder / UGRL_MECHANISM), "most_uncertain_at_end": most_uncertain(folder / UGRL_UNCERTAINTY)}


def ranking(path: Path) -> dict[str, object]:
    """From mechanism.csv: the AUROC of certainty for a right label (ranked within classes), the
    precision of the most and least certain 20%, and in how many classes the pool beats the rest."""
    if not path.is_file():
        return {}
    frame = read_csv(path, ["class", "auroc", "precision_top20", "precision_bottom20", "pool_precision",
                            "outside_precision"]).set_index("class")
    if "all" not in frame.index:
        raise InputError(f"{path}: no 'all' row (written by stages/methods/ugrl/report.py)")
    classes = frame.drop(index="all")
    better = int((classes["pool_precision"] > classes["outside_precision"]).sum())
    return {"auroc": float(frame.loc["all", "auroc"]), "top20": float(frame.loc["all", "precision_top20"]),
            "bottom20": float(frame.loc["all", "precision_bottom20"]),
            "classes_pool_better": f"{better}/{len(classes)}"}


def eil_rows(variant: str, folder: Path) -> pd.DataFrame | None:
    """Label precision and coverage per round (round 0: the scribbles)."""
    path = folder / EIL_ROUNDS
    if not path.is_file():
        return None
    frame = read_csv(path, ["round", "precision", "coverage"])
    return frame[[c for c in EIL_COLUMNS if c in frame.columns]].assign(variant=variant)


def diagnostics_markdown(outputs: dict[str, Path]) -> str:
    """summary.md's method section: one table per method that left a report in any variant's folder."""
    ugrl = [row for v, folder in outputs.items() if (row := ugrl_row(v, folder)) is not None]
    eil = [rows for v, folder in outputs.items() if (rows := eil_rows(v, folder)) is not None]
    text = "\n## Method diagnostics\n\n"
    if not ugrl and not eil:
        return text + f"No method report ({UGRL_POOL}, {EIL_ROUNDS}) in the variants' outputs folders.\n"
    if ugrl:
        text += ("UGRL: labels that agree with ground truth (train images with masks), in the reliable pool "
                 "and over all labelled pixels; the pool should be the more precise (the paper's mechanism). "
                 "`pool_share`: the pool's share of labelled pixels. `auroc`: how well the certainty that "
                 "ranks pixels tells right labels from wrong ones within a class (0.5: not at all); `top20`, "
                 "`bottom20`: precision of each class's most and least certain 20%; `classes_pool_better`: "
                 "classes whose pool is more precise than their pixels outside it.\n\n"
                 + to_markdown(pd.DataFrame(ugrl)) + "\n")
    if eil:
        table = pd.concat(eil, ignore_index=True)
        table = table[["variant", *(c for c in table.columns if c != "variant")]]
        text += ("EIL: labels after each round against ground truth (round 0: the scribbles); precision over "
                 "labelled pixels, coverage of pixels with ground truth; `adopted`: share of label maps the "
                 "round replaced; `reward_precision_spearman`: does the critic's reward rank proposals by their "
                 "true change in precision; `q_reward_corr`: the assessor's Q against the round's rewards; "
                 "precision of the pixels added by adopted, rejected, the policy's and random proposals (random "
                 "at the policy's coverage).\n\n" + to_markdown(table) + "\n")
    return text
