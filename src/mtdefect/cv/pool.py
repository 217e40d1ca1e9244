"""Pool the out-of-fold rows of every fold into one summary, with 95 % intervals by tile group.

Each image was scored once, by the model of the fold that held it out. Pooled numbers treat all
rows as one test set; intervals resample whole tile groups (all photographs of a drawn tile, as
often as it is drawn), since the lightings of one tile are not independent samples; the per-fold
numbers show how much one fold's model differs from another's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from mtdefect import metrics
from mtdefect.inference.multiview import VIEW_FUSIONS, fuse_view_scores

Statistic = Callable[[np.ndarray], float]


class OutOfFold:
    """The rows of all folds as arrays (one entry per held-out image)."""

    def __init__(self, rows: Sequence[dict], free_class: str) -> None:
        self.rows = list(rows)
        self.free_class = free_class
        self.classes = np.array([r["class"] for r in rows])
        self.groups = np.array([r["group"] for r in rows])
        self.folds = np.array([r["fold"] for r in rows])
        self.counts = np.array([[r["tp"], r["fp"], r["fn"], r["fp_border"]] for r in rows], dtype=np.int64)
        self.scores = np.array([r["score"] for r in rows], dtype=np.float64)
        self.flagged = np.array([r["defective"] for r in rows], dtype=bool)
        self.defective = self.classes != free_class
        self.top1_correct = np.array([r.get("top1") == r["class"] for r in rows], dtype=bool)
        self.has_top1 = np.array([r.get("top1") is not None for r in rows], dtype=bool)

    def dice(self, index: np.ndarray, class_name: str | None = None) -> float:
        keep = (
            index[self.defective[index]] if class_name is None else index[self.classes[index] == class_name]
        )
        if not keep.size:
            return float("nan")
        tp, fp, fn, _ = self.counts[keep].sum(axis=0)
        return metrics.PixelCounts(int(tp), int(fp), int(fn)).dice

    def auroc(self, index: np.ndarray) -> float:
        return metrics.binary_auroc(self.scores[index], self.defective[index])

    def recall_at_fa(self, index: np.ndarray, max_rate: float = 0.01) -> float:
        return metrics.recall_at_false_alarm_rate(self.scores[index], self.defective[index], max_rate)[
            "recall"
        ]

    def decision(self, index: np.ndarray) -> dict[str, float]:
        """Recall and false-alarm rate of each fold's own calibrated decision."""
        return metrics.detection_rates(self.flagged[index], self.defective[index])

    def class_top1(self, index: np.ndarray) -> float:
        keep = index[self.defective[index] & self.has_top1[index]]
        return float(self.top1_correct[keep].mean()) if keep.size else float("nan")

    def clean_region_rate(self, index: np.ndarray) -> float:
        """Share of defect-free images that show any region (every mask pixel of one is a false
        positive): suspects below the reject decision included (``mask_gate_threshold``)."""
        keep = index[~self.defective[index]]
        return float((self.counts[keep, 1] > 0).mean()) if keep.size else float("nan")

    def border_share(self, index: np.ndarray) -> float:
        """Share of all false-positive mask pixels that lie in the 4 % border band."""
        fp, border = self.counts[index, 1].sum(), self.counts[index, 3].sum()
        return float(border / fp) if fp else float("nan")


def _interval(value: float, low: float, high: float) -> dict[str, float | None]:
    def clean(x: float) -> float | None:
        return None if not np.isfinite(x) else round(float(x), 6)

    return {"value": clean(value), "ci_low": clean(low), "ci_high": clean(high)}


def pool(
    rows: Sequence[dict],
    free_class: str,
    fold_thresholds: dict[int, float | None] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    max_false_alarm_rate: float = 0.01,
    group_gap: int | None = 300,
) -> dict:
    """The cross-validation summary (see the module docstring): pooled ``dice``, ``per_class_dice``,
    ``auroc``, ``recall_at_1pct_fa``, ``class_top1``, the calibrated decision's recall and false-alarm
    rate, the border band's share of false-positive pixels, the share of defect-free images showing
    any region (``clean_region_rate``), each with its interval; ``per_tile``
    (one decision per physical tile from its photographs, ``tile_level``); ``per_fold`` and the
    per-fold ``spread``."""
    oof = OutOfFold(rows, free_class)
    everyone = np.arange(len(rows))
    images = Counter(r["image"] for r in rows)
    repeated = [image for image, n in images.items() if n > 1]
    if repeated:
        raise ValueError(f"{len(repeated)} images were predicted by more than one fold, e.g. {repeated[0]}")

    def with_ci(statistic: Statistic, offset: int) -> dict[str, float | None]:
        low, high = metrics.group_bootstrap(oof.groups, statistic, n_resamples, seed + offset)
        return _interval(statistic(everyone), low, high)

    def fa_recall(index: np.ndarray) -> float:
        return oof.recall_at_fa(index, max_false_alarm_rate)

    def decision_recall(index: np.ndarray) -> float:
        return oof.decision(index)["recall"]

    def decision_fa(index: np.ndarray) -> float:
        return oof.decision(index)["false_alarm_rate"]

    defect_classes = sorted({c for c in oof.classes if c != free_class})
    at_budget = metrics.recall_at_false_alarm_rate(oof.scores, oof.defective, max_false_alarm_rate)
    summary = {
        "k": len(set(oof.folds.tolist())),
        "images": len(rows),
        "groups": len(set(oof.groups.tolist())),
        "defective_images": int(oof.defective.sum()),
        "dice": with_ci(oof.dice, 1),
        "per_class_dice": {
            c: with_ci(lambda index, c=c: oof.dice(index, c), 10 + i) for i, c in enumerate(defect_classes)
        },
        "auroc": with_ci(oof.auroc, 2),
        "recall_at_1pct_fa": {**with_ci(fa_recall, 3), "threshold": round(at_budget["threshold"], 6)},
        "recall_at_decision": with_ci(decision_recall, 4),
        "false_alarm_rate_at_decision": with_ci(decision_fa, 5),
        "class_top1": with_ci(oof.class_top1, 6),
        "border_fp_share": with_ci(oof.border_share, 7),
        "clean_region_rate": with_ci(oof.clean_region_rate, 8),
    }
    summary["mean_class_dice"] = _mean([v["value"] for v in summary["per_class_dice"].values()])
    summary["per_tile"] = tile_level(rows, free_class, group_gap, n_resamples, seed, max_false_alarm_rate)
    per_fold = []
    for fold in sorted(set(oof.folds.tolist())):
        index = np.flatnonzero(oof.folds == fold)
        decided = oof.decision(index)
        per_fold.append(
            {
                "fold": int(fold),
                "images": int(index.size),
                "groups": len(set(oof.groups[index].tolist())),
                "dice": _finite(oof.dice(index)),
                # which fold's tiles of which class are hard (pooled Dice is dominated by large regions)
                "per_class_dice": {c: _finite(oof.dice(index, c)) for c in defect_classes},
                "auroc": _finite(oof.auroc(index)),
                "recall_at_1pct_fa": _finite(fa_recall(index)),
                "recall_at_decision": _finite(decided["recall"]),
                "false_alarm_rate_at_decision": _finite(decided["false_alarm_rate"]),
                "class_top1": _finite(oof.class_top1(index)),
                "clean_region_rate": _finite(oof.clean_region_rate(index)),
                "decision_threshold": (fold_thresholds or {}).get(int(fold)),
            }
        )
    summary["per_fold"] = per_fold
    summary["spread"] = {
        key: _spread([f[key] for f in per_fold])
        for key in ("dice", "auroc", "recall_at_1pct_fa", "recall_at_decision", "class_top1")
    }
    return summary


def pooling_arguments(cfg) -> tuple[str, int | None, int, int]:
    """What every out-of-fold comparison takes from params.yaml: the free class, the split's
    ``group_gap`` (physical tiles), the bootstrap's resample count and its seed."""
    return cfg.data.free_class, cfg.data.split.get("group_gap"), int(cfg.cv.bootstrap), int(cfg.cv.seed)


def tile_ids(rows: Sequence[dict], group_gap: int | None) -> list[str]:
    """The physical tile of each row (``split.tile_names``: a group split where the lighting index
    starts again), named ``<class>/<group>.<k>``."""
    from mtdefect.data.split import tile_names

    return tile_names([(r["class"], r["image"]) for r in rows], group_gap)


def tile_views(
    rows: Sequence[dict], free_class: str, group_gap: int | None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The rows of each physical tile (``tile_ids``), and per tile whether it is defective and its
    tile group (what intervals resample)."""
    names, inverse = np.unique(np.array(tile_ids(rows, group_gap)), return_inverse=True)
    views = [np.flatnonzero(inverse == t) for t in range(len(names))]
    defective = np.array([rows[v[0]]["class"] != free_class for v in views])
    groups = np.array([rows[v[0]]["group"] for v in views])
    return views, defective, groups


def tile_detector(
    scores: np.ndarray,
    defective: np.ndarray,
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
    max_false_alarm_rate: float = 0.01,
    keys: tuple[str, str] = ("auroc", "tile_recall_at_1pct_fa"),
) -> dict:
    """One score per tile judged as a tile detector: AUROC and recall with at most
    ``max_false_alarm_rate`` of the clean tiles rejected, each with its interval by tile group
    (resampled with ``seed`` and ``seed + 1``)."""

    def auroc(index: np.ndarray) -> float:
        return metrics.binary_auroc(scores[index], defective[index])

    def recall(index: np.ndarray) -> float:
        return metrics.recall_at_false_alarm_rate(scores[index], defective[index], max_false_alarm_rate)[
            "recall"
        ]

    everyone = np.arange(len(scores))
    entry = {}
    for key, statistic, offset in ((keys[0], auroc, 0), (keys[1], recall, 1)):
        low, high = metrics.group_bootstrap(groups, statistic, n_resamples, seed + offset)
        entry[key] = _interval(statistic(everyone), low, high)
    return entry


def tile_level(
    rows: Sequence[dict],
    free_class: str,
    group_gap: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
    max_false_alarm_rate: float = 0.01,
) -> dict:
    """One decision per physical tile from all its photographs: each fusion of the view scores
    (median, mean, max) scored as a tile detector (``tile_detector``)."""
    views, defective, groups = tile_views(rows, free_class, group_gap)
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    result: dict = {
        "tiles": len(views),
        "defective_tiles": int(defective.sum()),
        "views_per_tile": round(float(np.mean([len(v) for v in views])), 3),
    }
    for fusion in VIEW_FUSIONS:  # the service's own fusions (inference.multiview)
        fused = np.array([fuse_view_scores(scores[v], fusion) for v in views])
        result[fusion] = tile_detector(fused, defective, groups, n_resamples, seed + 20, max_false_alarm_rate)
    return result


def curves(rows: Sequence[dict], free_class: str) -> dict[str, list[dict]]:
    """Pooled out-of-fold ROC and precision-recall points (``dvc plots``), and Dice per class."""
    oof = OutOfFold(rows, free_class)
    everyone = np.arange(len(rows))
    return {
        "roc": metrics.roc_curve(oof.scores, oof.defective),
        "pr": metrics.precision_recall_curve(oof.scores, oof.defective),
        "per_class_dice": [
            {"class": c, "dice": _finite(oof.dice(everyone, c))}
            for c in sorted({c for c in oof.classes if c != free_class})
        ],
    }


def _finite(x: float) -> float | None:
    return round(float(x), 6) if np.isfinite(x) else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 6) if kept else None


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if not kept.size:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": round(float(kept.mean()), 6),
        "std": round(float(kept.std(ddof=1)) if kept.size > 1 else 0.0, 6),
        "min": round(float(kept.min()), 6),
        "max": round(float(kept.max()), 6),
    }
