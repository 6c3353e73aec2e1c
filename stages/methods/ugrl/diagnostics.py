"""Whether UGRL's uncertainty ranks label correctness: the measurements behind its mechanism.

The method keeps a strided sample of labelled pixels that have ground truth (train images with
masks; ground truth is read for this report only, never by a loss): each pixel's label, its
certainty (minus the uncertainty that ranked it), whether the label is right, and whether it was
in the reliable pool. From that sample:

- precision by certainty decile (decile 10: the most certain tenth), overall and per class;
- the AUROC of certainty for "label = ground truth" within each class (0.5: no ranking), and
  overall after a per-class rank (so that one class being easier than another does not count);
- each class's share of the pool, and its precision inside and outside the pool.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

DECILES = 10
MIN_PIXELS = 50  # a class with fewer sampled pixels gets no per-class figures


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U); NaN
    without both outcomes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(score, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def decile_precision(certainty: np.ndarray, right: np.ndarray) -> list[float]:
    """Precision of each certainty decile, least certain first (ties split by position)."""
    order = np.argsort(certainty, kind="stable")
    return [float(np.mean(right[part])) if len(part) else float("nan")
            for part in np.array_split(order, DECILES)]


def class_rank(frame: pd.DataFrame) -> np.ndarray:
    """Each pixel's certainty as a percentile within its class."""
    return frame.groupby("label")["certainty"].rank(pct=True).to_numpy()


def mechanism_table(frame: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per class with enough pixels, and ``all``: pixels, AUROC, precision by decile, the
    top and bottom 20%'s precision, pool share and precision inside and outside the pool.

    ``frame``: columns label (class index), certainty, right (bool), pool (bool).
    """
    rows = []
    groups = [(classes[c] if c < len(classes) else str(c), g) for c, g in frame.groupby("label")]
    for name, group in [("all", frame), *groups]:
        if len(group) < (1 if name == "all" else MIN_PIXELS):
            continue
        right, pool = group["right"].to_numpy(bool), group["pool"].to_numpy(bool)
        rank = class_rank(group) if name == "all" else group["certainty"].rank(pct=True).to_numpy()
        row = {"class": name, "pixels": len(group), "labelled_precision": right.mean(),
               "auroc": auroc(rank, right),
               "precision_top20": right[rank > 0.8].mean() if (rank > 0.8).any() else np.nan,
               "precision_bottom20": right[rank <= 0.2].mean() if (rank <= 0.2).any() else np.nan,
               "pool_share": pool.mean() if name == "all" else pool.sum() / max(1, frame["pool"].sum()),
               "pool_precision": right[pool].mean() if pool.any() else np.nan,
               "outside_precision": right[~pool].mean() if (~pool).any() else np.nan}
        row.update({f"precision_d{i + 1}": p for i, p in enumerate(decile_precision(rank, right))})
        rows.append(row)
    return pd.DataFrame(rows)


SAMPLE_COLUMNS = ["label", "certainty", "right", "pool"]
SAMPLE_PIXELS = 2048  # per micro-batch: ~300k pixels over a 150-step run, 2.4 MB of state


def pixel_sample(label: torch.Tensor, certainty: torch.Tensor, right: torch.Tensor, pool: torch.Tensor,
                 keep: torch.Tensor, limit: int = SAMPLE_PIXELS) -> torch.Tensor:
    """(N, 4) float16 rows (label, certainty, right, pool) of every ``keep`` pixel, or of an evenly
    strided ``limit`` of them (no random draw: the training's random stream stays as it was)."""
    index = keep.flatten().nonzero()[:, 0]
    if len(index) > limit:
        index = index[torch.linspace(0, len(index) - 1, limit, device=index.device).long()]
    columns = [label.flatten()[index].float(), certainty.flatten()[index].float().clamp(-4, 4),
               right.flatten()[index].float(), pool.flatten()[index].float()]
    return torch.stack(columns, dim=1).half()
