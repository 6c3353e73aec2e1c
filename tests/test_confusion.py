"""ConfusionMatrix against hand-computed matrices, with ignored predictions skipped or as background."""
from __future__ import annotations

import numpy as np
import pytest

from stages.metrics.confusion import ConfusionMatrix

GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], dtype=np.uint8)
PRED = np.array([[0, 255, 1, 255], [2, 0, 1, 255]], dtype=np.uint8)


def test_ignored_predictions_skipped_or_counted_as_background() -> None:
    cm = ConfusionMatrix(3)
    cm.update(GT, PRED)
    # labelled pixels only (truth 255 and prediction 255 skipped); rows truth, columns prediction
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert cm.unlabelled.tolist() == [1, 2, 0] and cm.valid_gt == 7
    # IoU 0: 1/(2+1-1), 1: 1/(1+1-1), 2: 1/(1+2-1)
    assert cm.iou().tolist() == pytest.approx([1 / 2, 1, 1 / 2])
    assert cm.miou() == pytest.approx(2 / 3)
    assert cm.coverage() == pytest.approx(4 / 7) and cm.pixel_accuracy() == pytest.approx(3 / 4)

    as_bg = cm.ignored_as(0)  # the three 255 predictions become background
    assert as_bg.matrix.tolist() == [[2, 0, 0], [2, 1, 0], [1, 0, 1]]
    # IoU 0: 2/(5+2-2), 1: 1/(1+3-1), 2: 1/(1+2-1)
    assert as_bg.iou().tolist() == pytest.approx([2 / 5, 1 / 3, 1 / 2])
    assert as_bg.miou() == pytest.approx((2 / 5 + 1 / 3 + 1 / 2) / 3)
    assert as_bg.coverage() == 1.0
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]  # the original is unchanged


def test_merge_adds_the_unlabelled_counts() -> None:
    a, b, both = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(GT[:1], PRED[:1])
    b.update(GT[1:], PRED[1:])
    both.update(GT, PRED)
    a.merge(b)
    assert a.matrix.tolist() == both.matrix.tolist()
    assert a.unlabelled.tolist() == both.unlabelled.tolist() and a.valid_gt == both.valid_gt


def test_without_ignored_predictions_both_agree() -> None:
    cm = ConfusionMatrix(3)
    cm.update(GT, np.where(PRED == 255, 0, PRED).astype(np.uint8))
    assert cm.miou() == pytest.approx(cm.ignored_as(0).miou())
    assert cm.unlabelled.tolist() == [0, 0, 0]


def test_error_shares_split_the_errors_by_where_they_fall() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 0, 1, 2]]), np.array([[1, 0, 2, 2]]))
    # one background pixel called foreground, one class-1 pixel called class 2; 3 fg predicted of 2
    assert cm.error_shares() == pytest.approx({"fg_ratio": 1.5, "false_fg": 0.25, "missed_fg": 0.0,
                                               "wrong_class": 0.25})
    as_bg = ConfusionMatrix(3)
    as_bg.update(GT, PRED)
    shares = as_bg.ignored_as(0).error_shares()  # three object pixels left unlabelled: missed
    assert shares == pytest.approx({"fg_ratio": 2 / 5, "false_fg": 0.0, "missed_fg": 3 / 7, "wrong_class": 0.0})
    errors = shares["false_fg"] + shares["missed_fg"] + shares["wrong_class"]
    assert as_bg.ignored_as(0).pixel_accuracy() + errors == pytest.approx(1)
    assert all(np.isnan(v) for v in ConfusionMatrix(3).error_shares().values())
