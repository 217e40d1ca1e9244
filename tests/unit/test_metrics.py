"""Metrics against hand-computed values, empty masks included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtdefect.metrics import (
    PixelCounts,
    auroc,
    classification_report,
    detection_rates,
    dice,
    iou,
    precision_recall_curve,
    roc_curve,
)


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


def rank_statistic_auroc(scores, labels) -> float:
    """An independent AUROC: the share of (positive, negative) pairs ranked right, ties one half."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    )


def test_library_auroc_and_curves_agree_with_an_independent_implementation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.random(60) < 0.3
        labels[:2] = [True, False]
        scores = np.round(rng.random(60) * (0.5 + labels), 2).clip(0, 1)  # rounded: ties included
        assert auroc(scores, labels) == pytest.approx(rank_statistic_auroc(scores, labels), abs=1e-6)
        roc = roc_curve(scores, labels)
        area = sum((b["fpr"] - a["fpr"]) * (a["tpr"] + b["tpr"]) / 2 for a, b in zip(roc, roc[1:]))
        assert area == pytest.approx(rank_statistic_auroc(scores, labels), abs=1e-6)
        for point in roc[1:]:  # each point: the rates of flagging score >= threshold
            flagged = scores >= point["threshold"]
            assert point["tpr"] == pytest.approx(flagged[labels].mean())
            assert point["fpr"] == pytest.approx(flagged[~labels].mean())
        for point in precision_recall_curve(scores, labels):
            flagged = scores >= point["threshold"]
            assert point["recall"] == pytest.approx(flagged[labels].mean())
            assert point["precision"] == pytest.approx(labels[flagged].mean())


def test_auroc_of_scores_outside_0_1_is_the_rank_statistic() -> None:
    """z-scores, distances and logits (the decision's scorers): clamping them to [0, 1] once made
    every z above 1 a tie (AUROC 0.5 for distances); the area must depend on the order alone."""
    assert auroc([-3.0, -2.0, 5.0, 7.0], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert auroc([45.7, 67.4, 58.1, 62.3], [0, 1, 1, 0]) == pytest.approx(0.75)  # distances > 1
    rng = np.random.default_rng(1)
    for _ in range(10):
        labels = rng.random(80) < 0.4
        labels[:2] = [True, False]
        z = np.round(rng.normal(size=80) * 4 + 3 * labels, 1)  # ties included
        assert auroc(z, labels) == pytest.approx(rank_statistic_auroc(z, labels), abs=1e-6)
        assert auroc(z, labels) == pytest.approx(auroc(1 / (1 + np.exp(-z / 8)), labels), abs=1e-6)


def test_curves_refuse_scores_outside_0_1_instead_of_clamping_them() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        roc_curve(np.array([-2.0, 0.5, 3.0]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        precision_recall_curve(np.array([0.2, 1.5]), np.array([0, 1]))


def test_detection_rates_by_hand() -> None:
    rates = detection_rates(np.array([1, 0, 1, 0, 0], bool), np.array([1, 1, 0, 0, 0], bool))
    assert rates == {"recall": 0.5, "false_alarm_rate": pytest.approx(1 / 3), "n_defective": 2, "n_free": 3}
    assert math.isnan(detection_rates(np.array([True]), np.array([True]))["false_alarm_rate"])


def test_classification_report_by_hand() -> None:
    report = classification_report(["a", "a", "b", "c"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert report["matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]  # rows actual, columns predicted
    assert report["accuracy"] == 0.5
    assert report["per_class"]["b"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "support": 1}
    assert report["per_class"]["a"]["recall"] == 0.5 and math.isnan(report["per_class"]["c"]["precision"])
