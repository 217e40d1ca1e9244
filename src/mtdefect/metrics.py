"""Segmentation and detection metrics as plain functions over numpy arrays.

Conventions (documented in the README):
- masks are boolean (or {0, 255}); Dice/IoU are *pooled*: pixel counts are summed over images
  first, then the ratio is taken, so large defects do not drown small ones less than a mean of
  per-image ratios would let empty images dominate;
- a Dice or IoU whose prediction and truth are both empty is 1.0 (nothing to find, nothing found);
- detection: a tile is flagged when its prediction keeps at least one region; recall is over
  defective tiles, the false-alarm rate over defect-free tiles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PixelCounts:
    """Running pooled confusion counts for the foreground class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> "PixelCounts":
        p = np.asarray(prediction) > 0
        t = np.asarray(truth) > 0
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
        tp = int(np.count_nonzero(p & t))
        self.tp += tp
        self.fp += int(np.count_nonzero(p)) - tp
        self.fn += int(np.count_nonzero(t)) - tp
        return self

    @property
    def dice(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator

    @property
    def iou(self) -> float:
        denominator = self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else self.tp / denominator


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return PixelCounts().add(prediction, truth).dice


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    return PixelCounts().add(prediction, truth).iou


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties count one half); NaN if one class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """ROC points (fpr, tpr, threshold), from the highest threshold down."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    points = [{"fpr": 0.0, "tpr": 0.0, "threshold": 1.0}]
    for threshold in np.unique(scores)[::-1]:
        flagged = scores >= threshold
        points.append(
            {
                "fpr": float((flagged & ~labels).sum() / n_neg),
                "tpr": float((flagged & labels).sum() / n_pos),
                "threshold": float(threshold),
            }
        )
    return points


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """PR points (recall, precision, threshold) for image-level detection."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = max(int(labels.sum()), 1)
    points = []
    for threshold in np.unique(scores)[::-1]:
        flagged = scores >= threshold
        tp = int((flagged & labels).sum())
        points.append(
            {"recall": tp / n_pos, "precision": tp / max(int(flagged.sum()), 1), "threshold": float(threshold)}
        )
    return points


@dataclass
class EvaluationAccumulator:
    """Collects per-image results and reduces them to the project's headline metrics."""

    free_class: str = "MT_Free"
    pooled: PixelCounts = field(default_factory=PixelCounts)
    per_class: dict[str, PixelCounts] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    is_defective: list[bool] = field(default_factory=list)
    image_dice: list[float] = field(default_factory=list)

    def add(self, class_name: str, prediction: np.ndarray, truth: np.ndarray, score: float, flagged: bool) -> float:
        """Record one image; returns its own Dice (for ranking worst cases)."""
        defective = class_name != self.free_class
        if defective:
            self.pooled.add(prediction, truth)
        self.per_class.setdefault(class_name, PixelCounts()).add(prediction, truth)
        self.scores.append(float(score))
        self.flagged.append(bool(flagged))
        self.is_defective.append(defective)
        value = dice(prediction, truth)
        self.image_dice.append(value)
        return value

    def summary(self) -> dict:
        labels = np.array(self.is_defective, dtype=bool)
        flagged = np.array(self.flagged, dtype=bool)
        n_def, n_free = int(labels.sum()), int((~labels).sum())
        result = {
            "dice": self.pooled.dice,
            "iou": self.pooled.iou,
            "detection": {
                "recall": float(flagged[labels].mean()) if n_def else float("nan"),
                "false_alarm_rate": float(flagged[~labels].mean()) if n_free else float("nan"),
                "auroc": auroc(np.array(self.scores), labels),
                "n_defective": n_def,
                "n_free": n_free,
            },
            "per_class_dice": {
                name: counts.dice for name, counts in sorted(self.per_class.items()) if name != self.free_class
            },
        }
        if self.free_class in self.per_class:
            # on defect-free tiles Dice is 1 only when nothing is predicted: report the clean fraction instead
            free_flags = flagged[~labels]
            result["free_clean_rate"] = float(1.0 - free_flags.mean()) if n_free else float("nan")
        return result
