"""Choose the postprocessing (and test-time flips) on the validation split; never sees the test split.

Decisions, made in order for each candidate set of test-time flips:
1. The tile decision. Each score source — the tile head (P(defect) = 1 − P(free), models with a head) and the
   mask's windowed probability for each ``score_windows`` entry — gets the lowest decision threshold
   that keeps false alarms on defect-free validation tiles within ``max_false_alarm_rate``; the
   source the ``decision_criterion`` names wins: ``head`` (the tile head whenever the model has one;
   else as ``recall``), ``recall`` there (ties: higher AUROC, then the head, then the smaller window),
   or ``auroc`` (ties: recall, the head, the smaller window). The recall at a 1 % budget is set by the
   one or two strangest of ~100 clean validation tiles, and under five-fold CV it crowned a mask score
   where the head rejected more held-out defects in three of four folds (docs/MODEL_QUALITY.md,
   session 10); the windows still serve the mask gate.
2. The mask. The mask gate (which tiles judged clean still show their regions: none, or with
   ``max_region_rate`` those whose decision score or windowed mask score reaches a level at most that
   share of defect-free tiles reaches), the pixel threshold and minimum region area with the best
   ``mask_criterion`` win: ``mean_class_dice`` (default; each defect class weighs the same, so
   settings that delete every blowhole lose) or ``dice`` (pooled; dominated by the big classes).
Then the flip set with the best recall, AUROC, criterion, and fewest flips wins, among the sets whose
median per-image latency on validation (``Predictor.infer`` with the predictor calibration is given)
is within ``max_latency_ms`` (None: no limit; the set with the fewest flips is always eligible).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mtdefect import metrics
from mtdefect.data.split import Record
from mtdefect.inference import Predictor
from mtdefect.inference.postprocess import find_regions, gate_score, passes_gate, tile_score
from mtdefect.inference.settings import PostprocessSettings
from mtdefect.scoring import ScoredImage, score_split, split_metrics

MASK_CRITERIA = ("mean_class_dice", "dice")
DECISION_CRITERIA = ("head", "recall", "auroc")


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


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def choose_decision(
    items: Sequence[ScoredImage],
    score_windows: Sequence[int],
    max_false_alarm_rate: float,
    free_class: str = "MT_Free",
    criterion: str = "recall",
) -> tuple[PostprocessSettings, list[dict[str, Any]]]:
    """The score source and decision threshold (step 1 of the module docstring), and one row per source."""
    if criterion not in DECISION_CRITERIA:
        raise ValueError(
            f"calibration.decision_criterion must be one of {DECISION_CRITERIA}, got {criterion!r}"
        )
    labels = np.array([item.record.class_name != free_class for item in items], dtype=bool)
    candidates = (
        [PostprocessSettings(score_source="head", free_class=free_class)]
        if items and items[0].class_scores
        else []
    )
    candidates += [PostprocessSettings(score_window=int(w), free_class=free_class) for w in score_windows]
    rows = []
    for candidate in candidates:
        scores = np.array([tile_score(item.probability, candidate, item.class_scores) for item in items])
        threshold = budget_threshold(scores[~labels], max_false_alarm_rate)
        rates = metrics.detection_rates(scores >= threshold, labels)
        rows.append(
            {
                "score_source": candidate.score_source,
                "score_window": candidate.score_window,
                "decision_threshold": threshold,
                "recall": _finite(rates["recall"]),
                "false_alarm_rate": _finite(rates["false_alarm_rate"]),
                "auroc": metrics.binary_auroc(scores, labels),
            }
        )

    def rank(r: dict[str, Any]) -> tuple:
        head, window = r["score_source"] == "head", -r["score_window"]
        if criterion == "head":
            return (head, r["recall"], _finite(r["auroc"]), window)
        if criterion == "auroc":
            return (_finite(r["auroc"]), r["recall"], head, window)
        return (r["recall"], _finite(r["auroc"]), head, window)

    best = max(rows, key=rank)
    settings = PostprocessSettings(
        score_source=best["score_source"],
        score_window=best["score_window"],
        decision_threshold=best["decision_threshold"],
        free_class=free_class,
    )
    return settings, rows


def choose_views_threshold(
    items: Sequence[ScoredImage],
    settings: PostprocessSettings,
    max_false_alarm_rate: float,
    group_gap: int | None,
) -> tuple[float, dict[str, Any]]:
    """The multi-view tile threshold (``views_decision_threshold``): the validation images grouped
    into physical tiles (``split.tile_names``), each tile's view scores fused as the service fuses
    them (``settings.view_fusion``), the threshold set so at most the budgeted share of clean tiles
    is rejected. Returns it and the tile-level numbers at it."""
    from mtdefect.data.split import tile_names
    from mtdefect.inference.multiview import fuse_view_scores

    names = tile_names([(item.record.class_name, item.record.image) for item in items], group_gap)
    views: dict[str, list[float]] = {}
    defective: dict[str, bool] = {}
    for name, item in zip(names, items):
        views.setdefault(name, []).append(tile_score(item.probability, settings, item.class_scores))
        defective[name] = item.record.class_name != settings.free_class
    tiles = sorted(views)
    fused = np.array([fuse_view_scores(views[t], settings.view_fusion) for t in tiles])
    labels = np.array([defective[t] for t in tiles], dtype=bool)
    threshold = budget_threshold(fused[~labels], max_false_alarm_rate)
    rates = metrics.detection_rates(fused >= threshold, labels)
    return threshold, {
        "fusion": settings.view_fusion,
        "views_decision_threshold": threshold,
        "tiles": len(tiles),
        "defective_tiles": int(labels.sum()),
        "views_per_tile": round(float(np.mean([len(v) for v in views.values()])), 3) if tiles else 0.0,
        "recall": _finite(rates["recall"]),
        "false_alarm_rate": _finite(rates["false_alarm_rate"]),
        "auroc": metrics.binary_auroc(fused, labels),
    }


Gate = tuple[int | None, float]  # (mask_gate_window, mask_gate_threshold)


def mask_gate_candidates(
    clean_gate_scores: Mapping[int | None, Sequence[float]], max_region_rate: float
) -> list[Gate]:
    """The mask gates tried besides the decision's own (``PostprocessSettings.mask_gate_*``): for each
    gate score (``gate_score`` of the defect-free validation tiles, per ``mask_gate_window``), the
    levels that a quarter, half and all of ``max_region_rate`` of those tiles reach; and 0 (every tile
    shows its regions: eligible only where the pixel threshold and area keep clean tiles clean)."""
    gates: list[Gate] = []
    for window, scores in clean_gate_scores.items():
        for fraction in (0.25, 0.5, 1.0):  # strictest first: ties go to the gate showing fewer tiles
            gate = (window, budget_threshold(scores, max_region_rate * fraction))
            if gate not in gates:
                gates.append(gate)
    return [*gates, (None, 0.0)] if (None, 0.0) not in gates else gates


def _pixel_counts(item: ScoredImage, threshold: float, area: int) -> tuple[int, int, int, bool]:
    mask = find_regions(item.probability, threshold, area)[0] > 0
    tp = int(np.count_nonzero(mask & item.truth))
    return tp, int(np.count_nonzero(mask)) - tp, int(np.count_nonzero(item.truth)) - tp, bool(mask.any())


def gated_settings(decision: PostprocessSettings, row: Mapping[str, Any]) -> PostprocessSettings:
    """The decision's settings with one ``gate_search`` row's mask (threshold, area, gate) applied."""
    return replace(
        decision,
        threshold=row["threshold"],
        min_region_area=row["min_region_area"],
        mask_gate_threshold=row["mask_gate_threshold"],
        mask_gate_window=row["mask_gate_window"],
    )


def gate_search(
    items: Sequence[ScoredImage],
    decision: PostprocessSettings,
    thresholds: Sequence[float],
    min_areas: Sequence[int],
    max_region_rate: float,
    score_windows: Sequence[int],
) -> list[dict[str, Any]]:
    """The mask criterion and the defect-free tiles' region rate of every gate × threshold × area,
    from pixel counts computed once per threshold × area (the gate only hides or shows a tile's
    regions); ``split_metrics`` gives the same numbers for any one of them, one by one."""
    if not items:
        return []
    classes = np.array([item.record.class_name for item in items])
    defective = classes != decision.free_class
    scores = np.array([tile_score(item.probability, decision, item.class_scores) for item in items])
    truth = np.array([np.count_nonzero(item.truth) for item in items])
    gate_scores = {
        window: np.array(
            [
                gate_score(i.probability, replace(decision, mask_gate_window=window), s)
                for i, s in zip(items, scores)
            ]
        )
        for window in (None, *score_windows)
    }
    gates = mask_gate_candidates({w: g[~defective] for w, g in gate_scores.items()}, max_region_rate)
    rows = []
    for threshold in thresholds:
        for area in min_areas:
            counts = np.array([_pixel_counts(item, float(threshold), int(area)) for item in items])
            for window, gate in gates:
                gated = replace(decision, mask_gate_window=window, mask_gate_threshold=gate)
                shown = passes_gate(scores, gate_scores[window], gated)
                tp, fp = np.where(shown, counts[:, 0], 0), np.where(shown, counts[:, 1], 0)
                fn = np.where(shown, counts[:, 2], truth)
                per_class = {
                    c: metrics.PixelCounts(int(tp[k].sum()), int(fp[k].sum()), int(fn[k].sum())).dice
                    for c in sorted(set(classes[defective]))
                    for k in [classes == c]
                }
                pooled = metrics.PixelCounts(
                    int(tp[defective].sum()), int(fp[defective].sum()), int(fn[defective].sum())
                )
                clean = ~defective
                rows.append(
                    {
                        "mask_gate_window": window,
                        "mask_gate_threshold": gate,
                        "threshold": float(threshold),
                        "min_region_area": int(area),
                        "dice": pooled.dice,
                        "mean_class_dice": float(np.mean(list(per_class.values())))
                        if per_class
                        else float("nan"),
                        "clean_region_rate": float((shown & (counts[:, 3] > 0))[clean].mean())
                        if clean.any()
                        else 0.0,
                    }
                )
    return rows


def choose_postprocess(
    items: Sequence[ScoredImage],
    thresholds: Sequence[float],
    min_areas: Sequence[int],
    max_false_alarm_rate: float,
    score_windows: Sequence[int],
    mask_criterion: str = "mean_class_dice",
    free_class: str = "MT_Free",
    max_region_rate: float | None = None,
    decision_criterion: str = "recall",
) -> tuple[PostprocessSettings, dict[str, Any]]:
    """Returns the chosen settings and a report: ``decision`` rows (one per score source), ``mask``
    rows (one per threshold × area with the mask gated at the decision, from ``split_metrics``),
    ``gates`` (with ``max_region_rate``: one per mask gate × threshold × area, ``gate_search``) and
    ``chosen`` (the winning setting's ``split_metrics`` with the decision's numbers, and ``objective``
    = mean of the criterion and recall, for sweeps). ``max_region_rate``: None gates the mask at the
    decision (a tile judged clean shows no regions); a share: a mask gate may win instead, among the
    settings where at most that share of the defect-free validation tiles shows any region."""
    if mask_criterion not in MASK_CRITERIA:
        raise ValueError(f"calibration.mask_criterion must be one of {MASK_CRITERIA}, got {mask_criterion!r}")
    decision, decision_rows = choose_decision(
        items, score_windows, max_false_alarm_rate, free_class, decision_criterion
    )
    mask_rows = []
    for threshold in thresholds:
        for area in min_areas:
            candidate = replace(decision, threshold=float(threshold), min_region_area=int(area))
            result = split_metrics(items, candidate)
            mask_rows.append(
                {
                    "threshold": candidate.threshold,
                    "min_region_area": candidate.min_region_area,
                    **{k: v for k, v in result.items() if k not in ("detection",)},
                    **result["detection"],
                }
            )
    best = max(mask_rows, key=lambda r: _finite(r[mask_criterion]))  # max keeps the first of equals
    settings = replace(decision, threshold=best["threshold"], min_region_area=best["min_region_area"])
    gate_rows: list[dict[str, Any]] = []
    if max_region_rate is not None and decision.decision_threshold is not None:
        gate_rows = gate_search(items, decision, thresholds, min_areas, max_region_rate, score_windows)
        eligible = [r for r in gate_rows if r["clean_region_rate"] <= max_region_rate + 1e-12]
        gated = max(eligible, key=lambda r: _finite(r[mask_criterion]), default=None)
        if gated is not None and _finite(gated[mask_criterion]) > _finite(best[mask_criterion]):
            settings = gated_settings(decision, gated)
            result = split_metrics(items, settings)
            best = {
                "threshold": settings.threshold,
                "min_region_area": settings.min_region_area,
                **{k: v for k, v in result.items() if k not in ("detection",)},
                **result["detection"],
            }
    chosen = {
        **best,
        "score_source": decision.score_source,
        "score_window": decision.score_window,
        "decision_threshold": decision.decision_threshold,
        "mask_gate_threshold": settings.mask_gate_threshold,
        "mask_gate_window": settings.mask_gate_window,
        "mask_criterion": mask_criterion,
        "max_region_rate": max_region_rate,
        "decision_criterion": decision_criterion,
    }
    chosen["objective"] = 0.5 * (_finite(best[mask_criterion]) + _finite(best["recall"]))
    for row in mask_rows:  # the report keeps the grid's numbers; the confusion matrices only for the winner
        row.pop("confusion", None)
        row.pop("classification", None)
    return settings, {"decision": decision_rows, "mask": mask_rows, "gates": gate_rows, "chosen": chosen}


def calibrate_on_validation(
    predictor: Predictor, data_dir: str | Path, val_records: Sequence[Record], calibration: Mapping[str, Any]
) -> tuple[tuple[str, ...], PostprocessSettings, dict[str, Any]]:
    """The test-time flips and the postprocessing chosen on the validation split. Each candidate set
    of flips is calibrated in full; the best recall at the false-alarm budget wins, then AUROC, then
    the mask criterion, then fewer flips (each costs a network pass)."""
    options = dict(calibration or {})
    candidates = [tuple(flips) for flips in options.pop("test_time_flips", [[]])] or [()]
    max_latency_ms = options.pop("max_latency_ms", None)
    free_class = predictor.settings.postprocess.free_class
    results, latencies = [], []
    for flips in candidates:
        flipped, times = predictor.with_flips(flips), []
        infer = flipped.infer

        def timed_infer(gray, infer=infer, times=times):
            start = time.perf_counter()
            answer = infer(gray)
            times.append((time.perf_counter() - start) * 1000.0)
            return answer

        flipped.infer = timed_infer  # the service's per-image work: preprocess, network passes, restore
        items = list(score_split(flipped, data_dir, val_records))
        post, report = choose_postprocess(items, free_class=free_class, **options)
        results.append((flips, post, report))
        latencies.append(float(np.median(times)) if times else float("nan"))
    eligible = eligible_flip_sets(candidates, latencies, max_latency_ms)
    if max_latency_ms is None:
        # no budget: the timings decide nothing, and left out they keep the saved calibration report
        # (a training output) identical from run to run; set a budget to record the trade-off
        latencies = [float("nan")] * len(latencies)

    def rank(result: tuple) -> tuple:
        flips, _, report = result
        chosen = report["chosen"]
        return (
            chosen["recall"],
            _finite(chosen["auroc"]),
            _finite(chosen[chosen["mask_criterion"]]),
            -len(flips),
        )

    flips, post, report = max((r for r, ok in zip(results, eligible) if ok), key=rank)
    numbers = [(list(f), {k: r["chosen"][k] for k in ("recall", "auroc", "dice")}) for f, _, r in results]
    report["test_time_flips"] = flip_tradeoff(numbers, latencies, eligible)
    report["chosen"]["test_time_flips"] = list(flips)
    report["latency"] = {
        "max_latency_ms": max_latency_ms,
        "backend": predictor.backend,
        "measured": "median ms per validation image of Predictor.infer",
    }
    return flips, post, report


def eligible_flip_sets(
    candidates: Sequence[Sequence[str]], latencies_ms: Sequence[float], max_latency_ms: float | None
) -> list[bool]:
    """Which flip sets may be chosen under a per-image latency budget: those measured within
    ``max_latency_ms`` (None: all). The set with the fewest flips always stays eligible (it is the
    cheapest there is: with nothing eligible the model would have no settings at all)."""
    if max_latency_ms is None:
        return [True] * len(candidates)
    fewest = min(range(len(candidates)), key=lambda i: (len(candidates[i]), i))
    return [
        i == fewest or (not math.isnan(ms) and ms <= float(max_latency_ms))
        for i, ms in enumerate(latencies_ms)
    ]


def flip_tradeoff(
    rows: Sequence[tuple[list[str], dict[str, float]]],
    latencies_ms: Sequence[float],
    eligible: Sequence[bool],
) -> list[dict[str, Any]]:
    """One row per flip set: its validation numbers, measured latency and, against the set with the
    fewest flips, the recall and Dice gained per extra millisecond (what a flip buys for its cost)."""
    base = min(range(len(rows)), key=lambda i: (len(rows[i][0]), i))
    base_numbers, base_ms = rows[base][1], latencies_ms[base]
    out = []
    for (flips, numbers), ms, ok in zip(rows, latencies_ms, eligible):
        extra = ms - base_ms
        row = {"flips": flips, **numbers, "latency_ms": ms, "eligible": bool(ok), "extra_ms": extra}
        if flips != rows[base][0] and extra > 0:
            row["recall_gain_per_ms"] = (_finite(numbers["recall"]) - _finite(base_numbers["recall"])) / extra
            row["dice_gain_per_ms"] = (_finite(numbers["dice"]) - _finite(base_numbers["dice"])) / extra
        out.append(row)
    return out
