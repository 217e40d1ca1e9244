"""Choose the postprocessing on the validation split; never looks at the test split.

Two decisions, made in order:
1. The tile decision. For each score window, the decision threshold is the lowest score that keeps
   the false-alarm rate on defect-free validation tiles within ``max_false_alarm_rate``; the window
   with the highest recall of defective tiles at that threshold wins (ties: higher AUROC, then the
   smaller window).
2. The mask. With that decision applied (a tile judged clean shows no defects), the pixel threshold
   and minimum region area that give the highest pooled Dice on defective validation tiles win
   (ties: the first in grid order).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from mtdefect.evaluate import ScoredImage
from mtdefect.inference.postprocess import find_regions, image_score, postprocess
from mtdefect.inference.settings import PostprocessSettings
from mtdefect.metrics import EvaluationAccumulator, PixelCounts, auroc

FREE_CLASS = EvaluationAccumulator.free_class


def budget_threshold(free_scores: Sequence[float], max_false_alarm_rate: float) -> float:
    """Lowest score threshold (``score >= t`` flags) that flags at most the budgeted share of
    defect-free tiles. With no defect-free tiles: 0.5."""
    if not len(free_scores):
        return 0.5
    ranked = np.sort(np.asarray(free_scores, dtype=np.float64))[::-1]
    allowed = math.floor(max_false_alarm_rate * len(ranked) + 1e-9)
    if allowed >= len(ranked):
        return 0.0
    return float(min(np.nextafter(ranked[allowed], np.inf), 1.0))


def choose_decision(
    items: Sequence[ScoredImage], score_windows: Sequence[int], max_false_alarm_rate: float
) -> tuple[PostprocessSettings, list[dict[str, Any]]]:
    labels = np.array([item.record.class_name != FREE_CLASS for item in items], dtype=bool)
    rows = []
    for window in score_windows:
        scores = np.array([image_score(item.probability, int(window)) for item in items])
        threshold = budget_threshold(scores[~labels], max_false_alarm_rate)
        flagged = scores >= threshold
        rows.append({
            "score_window": int(window),
            "decision_threshold": threshold,
            "recall": float(flagged[labels].mean()) if labels.any() else 0.0,
            "false_alarm_rate": float(flagged[~labels].mean()) if (~labels).any() else 0.0,
            "auroc": auroc(scores, labels),
        })
    best = max(rows, key=lambda r: (r["recall"], np.nan_to_num(r["auroc"]), -r["score_window"]))
    return PostprocessSettings(score_window=best["score_window"], decision_threshold=best["decision_threshold"]), rows


def choose_postprocess(
    items: Sequence[ScoredImage],
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    min_areas: Sequence[int] = (0, 16, 48, 128),
    max_false_alarm_rate: float = 0.01,
    score_windows: Sequence[int] = (1, 5, 9, 15),
) -> tuple[PostprocessSettings, dict[str, Any]]:
    """Returns the chosen settings and a report: ``decision`` rows (one per window), ``mask`` rows
    (one per threshold × area: Dice with the decision applied, and ``dice_ungated``, the segmenter
    alone, for comparing models whose decisions are weak) and ``chosen`` (the winning mask row plus
    the decision's recall, false-alarm rate and AUROC, and ``objective`` = mean of Dice and recall)."""
    decision, decision_rows = choose_decision(items, score_windows, max_false_alarm_rate)
    decided = next(r for r in decision_rows if r["score_window"] == decision.score_window)
    defect_items = [item for item in items if item.record.class_name != FREE_CLASS]
    mask_rows = []
    for threshold in thresholds:
        for area in min_areas:
            candidate = replace(decision, threshold=float(threshold), min_region_area=int(area))
            pooled, ungated, per_class = PixelCounts(), PixelCounts(), {}
            for item in defect_items:
                predicted = postprocess(item.probability, candidate).mask > 0  # what the service answers
                pooled.add(predicted, item.truth)
                ungated.add(find_regions(item.probability, candidate.threshold, candidate.min_region_area)[0] > 0,
                            item.truth)
                per_class.setdefault(item.record.class_name, PixelCounts()).add(predicted, item.truth)
            mask_rows.append({"threshold": candidate.threshold, "min_region_area": candidate.min_region_area,
                              "dice": pooled.dice, "dice_ungated": ungated.dice,
                              "per_class_dice": {c: n.dice for c, n in sorted(per_class.items())}})
    best = max(mask_rows, key=lambda r: r["dice"])  # max keeps the first of equals
    settings = replace(decision, threshold=best["threshold"], min_region_area=best["min_region_area"])
    chosen = {**best, **{k: decided[k] for k in ("score_window", "decision_threshold", "recall",
                                                 "false_alarm_rate", "auroc")}}
    chosen["objective"] = 0.5 * (chosen["dice"] + chosen["recall"])
    return settings, {"decision": decision_rows, "mask": mask_rows, "chosen": chosen}
