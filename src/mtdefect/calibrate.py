"""Choose the pixel threshold and minimum region area on the validation split.

The objective is the mean of pooled Dice (defect tiles) and detection recall, among settings whose
false-alarm rate on defect-free validation tiles is at most ``max_false_alarm_rate``; when none
qualifies, the lowest false-alarm rate wins. Never looks at the test split.
"""
from __future__ import annotations

from typing import Sequence

from mtdefect.evaluate import ScoredImage
from mtdefect.inference.postprocess import postprocess
from mtdefect.inference.settings import PostprocessSettings
from mtdefect.metrics import EvaluationAccumulator


def choose_postprocess(
    items: Sequence[ScoredImage],
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    min_areas: Sequence[int] = (0, 16, 48, 128),
    max_false_alarm_rate: float = 0.01,
) -> tuple[PostprocessSettings, list[dict]]:
    table = []
    for threshold in thresholds:
        for area in min_areas:
            settings = PostprocessSettings(threshold=float(threshold), min_region_area=int(area))
            acc = EvaluationAccumulator()
            for item in items:
                p = postprocess(item.probability, settings)
                acc.add(item.record.class_name, p.mask, item.truth, p.score, p.defective)
            s = acc.summary()
            far = s["detection"]["false_alarm_rate"]
            far = 0.0 if far != far else far  # NaN when the split has no defect-free tile
            recall = s["detection"]["recall"]
            recall = 0.0 if recall != recall else recall
            table.append({"threshold": settings.threshold, "min_region_area": settings.min_region_area,
                          "dice": s["dice"], "recall": recall, "false_alarm_rate": far,
                          "objective": 0.5 * (s["dice"] + recall)})
    allowed = [row for row in table if row["false_alarm_rate"] <= max_false_alarm_rate]
    if allowed:
        best = max(allowed, key=lambda r: (r["objective"], -r["false_alarm_rate"]))
    else:
        best = min(table, key=lambda r: (r["false_alarm_rate"], -r["objective"]))
    return PostprocessSettings(best["threshold"], best["min_region_area"]), table
