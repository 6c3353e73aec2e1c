"""Confusion-matrix accumulator: the one place IoU, precision and coverage are computed."""
from __future__ import annotations

import numpy as np

IGNORE = 255


class ConfusionMatrix:
    """Rows are ground truth, columns prediction; pixels whose truth or prediction is 255 are skipped.

    Skipping ignored *predictions* is what makes pseudo-label precision and coverage measurable
    from the same matrix: ``coverage`` is the share of valid GT pixels that received a label.
    Those pixels are still counted per true class (``unlabelled``), so ``ignored_as(0)`` gives the
    matrix the field reports for pseudo labels (IRN's evaluation: an ignored pixel is background),
    whose mIoU does not reward abstaining.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.valid_gt = 0  # GT pixels that are not 255, labelled or not
        self.unlabelled = np.zeros(num_classes, dtype=np.int64)  # per true class: predicted 255

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise ValueError(f"shape mismatch: gt {gt.shape} vs prediction {pred.shape}")
        gt = np.asarray(gt).ravel().astype(np.int64)
        pred = np.asarray(pred).ravel().astype(np.int64)
        n = self.num_classes
        gt_ok = gt != IGNORE
        if np.any(gt[gt_ok] >= n) or np.any(pred[pred != IGNORE] >= n):
            raise ValueError(f"class index out of range 0..{n - 1} (255 = ignore)")
        self.valid_gt += int(gt_ok.sum())
        keep = gt_ok & (pred != IGNORE)
        self.matrix += np.bincount(n * gt[keep] + pred[keep], minlength=n * n).reshape(n, n)
        self.unlabelled += np.bincount(gt[gt_ok & ~keep], minlength=n)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix
        self.valid_gt += other.valid_gt
        self.unlabelled += other.unlabelled

    def ignored_as(self, label: int = 0) -> "ConfusionMatrix":
        """The matrix had every ignored (255) prediction been ``label``; coverage becomes 1."""
        out = ConfusionMatrix(self.num_classes)
        out.matrix = self.matrix.copy()
        out.matrix[:, label] += self.unlabelled
        out.valid_gt = self.valid_gt
        return out

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def error_shares(self, background: int = 0) -> dict[str, float]:
        """Where the errors fall, for labels or predictions that may be biased rather than noisy:
        ``fg_ratio``, predicted over true foreground pixels (1: the right amount), and the shares
        of counted pixels that are ``false_fg`` (true background, predicted foreground),
        ``missed_fg`` (true foreground, predicted background) and ``wrong_class`` (foreground as
        another foreground class); with pixel accuracy they sum to 1. NaN when nothing is counted."""
        total = self.matrix.sum()
        if not total:
            return dict.fromkeys(("fg_ratio", "false_fg", "missed_fg", "wrong_class"), float("nan"))
        fg = np.arange(self.num_classes) != background
        true_fg, pred_fg = self.matrix[fg].sum(), self.matrix[:, fg].sum()
        false_fg = self.matrix[background, fg].sum()
        missed_fg = self.matrix[fg, background].sum()
        wrong = self.matrix[np.ix_(fg, fg)].sum() - np.trace(self.matrix[np.ix_(fg, fg)])
        return {"fg_ratio": float(pred_fg / true_fg) if true_fg else float("nan"),
                "false_fg": float(false_fg / total), "missed_fg": float(missed_fg / total),
                "wrong_class": float(wrong / total)}

    def coverage(self) -> float:
        """Share of non-void GT pixels that carry a (non-ignore) prediction."""
        return float(self.matrix.sum() / self.valid_gt) if self.valid_gt else float("nan")
