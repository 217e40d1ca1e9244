"""Segmentation, detection and classification metrics as plain functions over numpy arrays.

Conventions (documented in the README):
- masks are boolean (or {0, 255}); Dice/IoU are *pooled*: pixel counts are summed over images
  first, then the ratio is taken (a mean of per-image ratios lets empty images dominate);
- a Dice or IoU whose prediction and truth are both empty is 1.0 (nothing to find, nothing found);
- detection: recall is over defective tiles, the false-alarm rate over defect-free tiles;
- AUROC and the ROC / precision-recall curves come from torchmetrics (tests cross-check them
  against the rank statistic); pooled Dice stays here, where it is four lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PixelCounts:
    """Running pooled confusion counts for the foreground class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> PixelCounts:
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


def _tensors(scores: np.ndarray, labels: np.ndarray):
    """Scores as torchmetrics reads probabilities. Scores outside [0, 1] are refused, not clamped: a
    clamp ties every score beyond the range (it once flattened the decision's z-scores), and
    torchmetrics would take them for logits. ``binary_auroc`` ranks such scores first."""
    import torch

    values = np.asarray(scores, dtype=np.float64)
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"scores must lie in [0, 1] for ROC/PR curves, got [{values.min()}, {values.max()}]")
    return torch.as_tensor(values), torch.as_tensor(np.asarray(labels).astype(bool)).long()


def binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN if a class is absent.

    Any real scores: AUROC depends only on their order, and scores outside [0, 1] (z-scores, distances,
    logits) are replaced by their dense ranks scaled into [0, 1] first — exact, ties kept — because
    torchmetrics would squash them through a sigmoid (saturating to ties)."""
    from torchmetrics.functional.classification import binary_auroc as _auroc

    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.min() < 0.0 or scores.max() > 1.0:
        _, ranks = np.unique(scores, return_inverse=True)
        scores = ranks.reshape(scores.shape) / max(int(ranks.max()), 1)
    return float(_auroc(*_tensors(scores, labels)))


auroc = binary_auroc


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """ROC points (fpr, tpr, threshold), from the highest threshold down."""
    from torchmetrics.functional.classification import binary_roc

    fpr, tpr, thresholds = binary_roc(*_tensors(scores, labels))
    return [
        {"fpr": float(f), "tpr": float(t), "threshold": float(min(th, 1.0))}
        for f, t, th in zip(fpr, tpr, thresholds)
    ]


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """PR points (recall, precision, threshold) for image-level detection, highest threshold first."""
    from torchmetrics.functional.classification import binary_precision_recall_curve

    precision, recall, thresholds = binary_precision_recall_curve(*_tensors(scores, labels))
    points = [
        {"recall": float(r), "precision": float(p), "threshold": float(t)}
        for p, r, t in zip(precision[:-1], recall[:-1], thresholds)
    ]
    return points[::-1]


def detection_rates(flagged: np.ndarray, defective: np.ndarray) -> dict[str, float]:
    """Recall over defective tiles and the false-alarm rate over defect-free ones (NaN when a
    group is empty): the one place this arithmetic lives."""
    flagged = np.asarray(flagged, dtype=bool)
    defective = np.asarray(defective, dtype=bool)
    return {
        "recall": float(flagged[defective].mean()) if defective.any() else float("nan"),
        "false_alarm_rate": float(flagged[~defective].mean()) if (~defective).any() else float("nan"),
        "n_defective": int(defective.sum()),
        "n_free": int((~defective).sum()),
    }


def classification_report(actual: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """Confusion matrix (rows actual, columns predicted, in ``labels`` order, via torchmetrics),
    per-class precision and recall, and top-1 accuracy."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    index = {name: i for i, name in enumerate(labels)}
    if not len(actual):
        return {"labels": list(labels), "matrix": [], "accuracy": float("nan"), "per_class": {}}
    matrix = multiclass_confusion_matrix(
        torch.tensor([index[p] for p in predicted]),
        torch.tensor([index[a] for a in actual]),
        num_classes=len(labels),
    )
    counts = matrix.numpy()
    per_class = {}
    for i, name in enumerate(labels):
        support, called = int(counts[i].sum()), int(counts[:, i].sum())
        per_class[name] = {
            "precision": float(counts[i, i] / called) if called else float("nan"),
            "recall": float(counts[i, i] / support) if support else float("nan"),
            "support": support,
        }
    return {
        "labels": list(labels),
        "matrix": counts.tolist(),
        "accuracy": float(np.trace(counts) / counts.sum()),
        "per_class": per_class,
    }


def border_band(shape: tuple[int, int], fraction: float = 0.04) -> np.ndarray:
    """Boolean mask of the band within ``fraction`` of each side of an image (0.04: 15 % of its area)."""
    height, width = shape
    dy, dx = max(int(round(height * fraction)), 1), max(int(round(width * fraction)), 1)
    band = np.zeros((height, width), dtype=bool)
    band[:dy], band[-dy:], band[:, :dx], band[:, -dx:] = True, True, True, True
    return band


def recall_at_false_alarm_rate(scores: np.ndarray, defective: np.ndarray, max_rate: float = 0.01) -> dict:
    """Recall when the threshold lets at most ``max_rate`` of the defect-free scores through:
    flagged means ``score > threshold``, the threshold being the ``floor(max_rate * n_free) + 1``-th
    highest defect-free score (ties at it are not flagged, so the budget is never exceeded)."""
    scores = np.asarray(scores, dtype=np.float64)
    defective = np.asarray(defective, dtype=bool)
    free = np.sort(scores[~defective])[::-1]
    if not free.size or not defective.any():
        return {"recall": float("nan"), "false_alarm_rate": float("nan"), "threshold": float("nan")}
    allowed = int(np.floor(max_rate * free.size + 1e-9))
    threshold = float(free[allowed]) if allowed < free.size else float(free[-1]) - 1e-12
    return {
        "recall": float((scores[defective] > threshold).mean()),
        "false_alarm_rate": float((free > threshold).mean()),
        "threshold": threshold,
    }


def group_bootstrap(
    groups: Sequence[str],
    statistic,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resamples that draw whole groups (all rows
    of a drawn group, as often as it is drawn) with replacement: rows of one physical tile are not
    independent, so they are resampled together. Non-finite resample values are skipped."""
    names = np.asarray(groups)
    unique, inverse = np.unique(names, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(unique), len(unique))
        value = statistic(np.concatenate([rows_of[g] for g in drawn]))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
