"""Metrics against hand-computed values, empty masks included."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mtdefect.metrics import EvaluationAccumulator, PixelCounts, auroc, dice, iou, roc_curve


def m(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_dice_iou_by_hand() -> None:
    pred = m(["##..", "##..", "....", "...."])  # 4 px
    truth = m([".##.", ".##.", "....", "...."])  # 4 px, overlap 2
    assert dice(pred, truth) == pytest.approx(2 * 2 / (4 + 4))
    assert iou(pred, truth) == pytest.approx(2 / 6)


def test_empty_masks() -> None:
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(full, empty) == 0.0 and iou(empty, full) == 0.0


def test_pooled_is_not_mean_of_ratios() -> None:
    counts = PixelCounts()
    counts.add(m(["#..."]), m(["#..."]))  # tp 1
    counts.add(m(["...."]), m(["####"]))  # fn 4
    # pooled: 2*1 / (2*1 + 0 + 4) = 1/3 ; the mean of per-image Dice would be 0.5
    assert counts.dice == pytest.approx(1 / 3)
    assert counts.iou == pytest.approx(1 / 5)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))


def test_auroc_by_hand() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # one tie between a positive and a negative counts one half: (1 + 1 + 0.5 + 1) / 4
    assert auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc([0.3], [1]))


def test_roc_curve_ends() -> None:
    points = roc_curve(np.array([0.9, 0.4, 0.3]), np.array([1, 0, 1]))
    assert points[0] == {"fpr": 0.0, "tpr": 0.0, "threshold": 1.0}
    assert points[-1]["fpr"] == 1.0 and points[-1]["tpr"] == 1.0


def test_accumulator_detection_and_per_class() -> None:
    acc = EvaluationAccumulator()
    acc.add("MT_Crack", m(["##"]), m(["#."]), score=0.9, flagged=True)
    acc.add("MT_Crack", m([".."]), m(["##"]), score=0.2, flagged=False)
    acc.add("MT_Free", m(["#."]), m([".."]), score=0.6, flagged=True)
    acc.add("MT_Free", m([".."]), m([".."]), score=0.1, flagged=False)
    s = acc.summary()
    # defect images only: tp 1, fp 1, fn 2 → dice 2/5, iou 1/4 (the Free false positive is excluded)
    assert s["dice"] == pytest.approx(2 / 5) and s["iou"] == pytest.approx(1 / 4)
    assert s["detection"]["recall"] == 0.5 and s["detection"]["false_alarm_rate"] == 0.5
    # scores: positives 0.9, 0.2; negatives 0.6, 0.1 → pairs won: (0.9>0.6, 0.9>0.1, 0.2>0.1) = 3/4
    assert s["detection"]["auroc"] == pytest.approx(0.75)
    assert s["per_class_dice"] == {"MT_Crack": pytest.approx(2 / 5)}
    assert s["free_clean_rate"] == 0.5
