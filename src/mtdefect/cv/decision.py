"""The reject decision's scorers compared out of fold: the tile head, the anomaly branch, and both fused.

Each scorer gives every held-out image a score (the head: P(defect) = 1 − P(MT_Free) from the fold's
model; the anomaly branch: ``cv.anomaly``). Scores of different scorers live on different scales, so each is
normalised by the same fold's *clean validation* images (never the held-out fold): a robust z-score
of a monotone transform (logit of the head's probability, log of the distance) against their median
and MAD. ``fused`` is the sum of the two z-scores (equal weights: nothing is fitted on held-out
labels). ``fused_fitted`` is a logistic combination of the two z-scores **cross-fitted**: for each
fold, fitted on the *other* folds' out-of-fold rows (scores of tiles their own models never saw, with
their labels) and applied to this fold, so no image is scored by weights that saw its label. Per
image and per physical tile (median of its views), pooled over the folds, with 95 % intervals by
resampling tile groups.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mtdefect import metrics
from mtdefect.cv.pool import _interval, pooling_arguments, tile_detector, tile_ids
from mtdefect.data.folds import job_name
from mtdefect.inference.multiview import fuse_view_scores
from mtdefect.inference.postprocess import defect_log_odds

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "head": defect_log_odds,
    "anomaly": lambda s: np.log(np.maximum(s, 1e-9)),
}


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values − median(reference)) / (1.4826 · MAD(reference)), the MAD floored to stay finite."""
    centre = float(np.median(reference))
    spread = 1.4826 * float(np.median(np.abs(reference - centre)))
    return (values - centre) / max(spread, 1e-6)


def normalised(scorer: str, held_out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    transform = TRANSFORMS[scorer]
    return robust_z(transform(np.asarray(held_out, float)), transform(np.asarray(reference, float)))


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2, steps: int = 50) -> np.ndarray:
    """Weights ``(bias, w_1 … w_k)`` of an L2-regularised logistic regression (Newton's method; the
    bias is not penalised). Small and exact enough for a handful of scores; no extra dependency."""
    x = np.column_stack([np.ones(len(features)), np.asarray(features, np.float64)])
    y = np.asarray(labels, np.float64)
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (p - y) + penalty * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def cross_fitted(features: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each fold's rows scored by a logistic combination fitted on the other folds' rows only."""
    scores = np.empty(len(features))
    for fold in sorted(set(folds.tolist())):
        index = folds == fold
        w = fit_logistic(features[~index], labels[~index])
        scores[index] = w[0] + features[index] @ w[1:]
    return scores


def scorer_summary(
    scores: np.ndarray,
    defective: np.ndarray,
    classes: np.ndarray,
    groups: np.ndarray,
    tiles: np.ndarray,
    free_class: str,
    n_resamples: int,
    seed: int,
    max_rate: float = 0.01,
) -> dict:
    """AUROC and recall at ≤ ``max_rate`` false alarms, per image and per tile (median of views),
    and per defect class (its images against all clean images)."""
    everyone = np.arange(len(scores))

    def auroc(index: np.ndarray) -> float:
        return metrics.binary_auroc(scores[index], defective[index])

    def recall(index: np.ndarray) -> float:
        return metrics.recall_at_false_alarm_rate(scores[index], defective[index], max_rate)["recall"]

    out = {}
    for key, statistic, offset in (("auroc", auroc, 1), ("recall_at_1pct_fa", recall, 2)):
        low, high = metrics.group_bootstrap(groups, statistic, n_resamples, seed + offset)
        out[key] = _interval(statistic(everyone), low, high)
    names, inverse = np.unique(tiles, return_inverse=True)
    views = [np.flatnonzero(inverse == t) for t in range(len(names))]
    tile_scores = np.array([fuse_view_scores(scores[v], "median") for v in views])
    tile_defective = np.array([defective[v[0]] for v in views])
    tile_groups = np.array([groups[v[0]] for v in views])
    keys = ("tile_auroc", "tile_recall_at_1pct_fa")
    out |= tile_detector(tile_scores, tile_defective, tile_groups, n_resamples, seed + 3, max_rate, keys)
    free = ~defective
    out["per_class_recall_at_1pct_fa"] = {
        c: round(
            metrics.recall_at_false_alarm_rate(
                scores[(classes == c) | free], defective[(classes == c) | free], max_rate
            )["recall"],
            6,
        )
        for c in sorted(set(classes[defective].tolist()))
    }
    return out


def paired_gain(
    baseline: np.ndarray,
    other: np.ndarray,
    defective: np.ndarray,
    groups: np.ndarray,
    tiles: np.ndarray,
    n_resamples: int,
    seed: int,
    max_rate: float = 0.01,
) -> dict:
    """``other − baseline`` on the same images: AUROC and recall at ≤ ``max_rate`` false alarms per
    image, and recall per tile (median of its views), each resample drawing whole tile groups and
    scoring *both* scorers on them, so the interval is that of the gain itself (``before`` and
    ``after``: the two scorers' own values on all images)."""
    names, inverse = np.unique(tiles, return_inverse=True)
    views = [np.flatnonzero(inverse == t) for t in range(len(names))]
    per_tile = {
        name: np.array([fuse_view_scores(scores[v], "median") for v in views])
        for name, scores in (("baseline", baseline), ("other", other))
    }
    tile_defective = np.array([defective[v[0]] for v in views])
    tile_groups = np.array([groups[v[0]] for v in views])

    def recall(scores: np.ndarray, truth: np.ndarray, index: np.ndarray) -> float:
        return metrics.recall_at_false_alarm_rate(scores[index], truth[index], max_rate)["recall"]

    levels = {  # each scorer's own value on an index of images (or tiles)
        "auroc": (groups, lambda s, i: metrics.binary_auroc(s[i], defective[i])),
        "recall_at_1pct_fa": (groups, lambda s, i: recall(s, defective, i)),
        "tile_recall_at_1pct_fa": (tile_groups, lambda s, i: recall(s, tile_defective, i)),
    }
    scorers = {
        "auroc": (baseline, other),
        "recall_at_1pct_fa": (baseline, other),
        "tile_recall_at_1pct_fa": (per_tile["baseline"], per_tile["other"]),
    }
    return {
        key: paired_difference(level, *scorers[key], resampled, n_resamples, seed + offset)
        for offset, (key, (resampled, level)) in enumerate(levels.items())
    }


def paired_difference(
    level: Callable[[np.ndarray, np.ndarray], float],
    before: np.ndarray,
    after: np.ndarray,
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
) -> dict:
    """``level(after, i) − level(before, i)`` over all rows, with its 95 % interval from resampling
    whole ``groups`` (both scorers judged on every resample), and each scorer's own value."""

    def statistic(i: np.ndarray) -> float:
        return level(after, i) - level(before, i)

    low, high = metrics.group_bootstrap(groups, statistic, n_resamples, seed)
    everyone = np.arange(len(groups))
    return {
        **_interval(statistic(everyone), low, high),
        "before": level(before, everyone),
        "after": level(after, everyone),
    }


def fused_z_scores(rows: Sequence[dict], reference: dict) -> dict[str, np.ndarray]:
    """Each scorer's raw score normalised by its job's clean validation scores (``reference[job]``),
    and the two label-free fusions: ``fused`` (sum of the z-scores) and ``fused_max`` (the larger)."""
    jobs = np.array([r["fold"] for r in rows], dtype=object)
    z: dict[str, np.ndarray] = {}
    for scorer in ("head", "anomaly"):
        raw = np.array([r[scorer] for r in rows], dtype=np.float64)
        z[scorer] = np.empty_like(raw)
        for job in dict.fromkeys(jobs.tolist()):
            index = jobs == job
            z[scorer][index] = normalised(scorer, raw[index], reference[job][scorer])
    z["fused"] = z["head"] + z["anomaly"]
    z["fused_max"] = np.maximum(z["head"], z["anomaly"])  # either branch alone may reject
    return z


def left_out_compare(
    held_out: Sequence[dict],
    reference: dict[str, dict[str, np.ndarray]],
    free_class: str,
    group_gap: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Leave one class out: per job (one left-out class against its held-out clean tiles), each
    scorer — head, anomaly, and the label-free fusions — normalised by that job's clean validation
    images. No combiner is fitted: a weight learned on the seen classes says nothing of an unseen one."""
    rows = list(held_out)
    z = fused_z_scores(rows, reference)
    jobs = np.array([r["fold"] for r in rows], dtype=object)
    classes = np.array([r["class"] for r in rows])
    result: dict = {}
    for job in dict.fromkeys(jobs.tolist()):
        index = np.flatnonzero(jobs == job)
        job_rows = [rows[i] for i in index]
        left_out = sorted(set(classes[index].tolist()) - {free_class})
        defective = classes[index] != free_class
        groups = np.array([r["group"] for r in job_rows])
        tiles = np.array(tile_ids(job_rows, group_gap))
        result[",".join(left_out)] = {
            "images": int(defective.sum()),
            "clean_images": int((~defective).sum()),
            **{
                name: scorer_summary(
                    scores[index], defective, classes[index], groups, tiles, free_class, n_resamples, seed
                )
                for name, scores in z.items()
            },
        }
    return result


def branch_rows(
    rows_dir: Path,
    anomaly_dir: Path,
    jobs: Sequence[int | str],
    missing_reference: Callable[[int | str], Sequence[float]] | None = None,
) -> tuple[list[dict], dict[int | str, dict[str, np.ndarray]]]:
    """Each job's held-out rows (``rows_dir/<job>.json`` of ``cv.fold``) with the anomaly branch's
    score of the same image (``anomaly_dir/<job>.json`` of ``cv.anomaly``), and per job both scorers'
    raw scores of its clean validation images (``compare``'s ``reference``). Rows written before
    ``cv.fold`` kept the head's reference get it from ``missing_reference(job)``, or are refused."""
    held_out: list[dict] = []
    reference: dict[int | str, dict[str, np.ndarray]] = {}
    for job in jobs:
        result = json.loads((rows_dir / f"{job_name(job)}.json").read_text())
        anomaly = json.loads((anomaly_dir / f"{job_name(job)}.json").read_text())["rows"]
        by_image = {r["image"]: r["anomaly"] for r in anomaly}
        head_reference = result.get("reference_scores")
        if head_reference is None:
            if missing_reference is None:
                raise ValueError(f"{rows_dir / job_name(job)}.json keeps no clean validation scores")
            head_reference = missing_reference(job)
        reference[job] = {
            "head": np.array(head_reference),
            "anomaly": np.array([r["anomaly"] for r in anomaly if r["split"] == "val"]),
        }
        for row in result["rows"]:
            held_out.append({**row, "fold": job, "head": row["score"], "anomaly": by_image[row["image"]]})
    return held_out, reference


def compare(
    held_out: Sequence[dict],
    reference: dict[int, dict[str, np.ndarray]],
    free_class: str,
    group_gap: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """``held_out``: one row per held-out image with ``image``, ``class``, ``group``, ``fold`` and a
    raw score per scorer (``head``, ``anomaly``); ``reference``: per fold, each scorer's raw scores
    of that fold's clean validation images. Returns each scorer's summary and the fused one's."""
    rows = list(held_out)
    folds = np.array([r["fold"] for r in rows])
    z = fused_z_scores(rows, reference)
    z["head_raw"] = np.array([r["head"] for r in rows], dtype=np.float64)  # pooled without normalising
    classes = np.array([r["class"] for r in rows])
    defective = classes != free_class
    if len(set(folds.tolist())) > 1:
        z["fused_fitted"] = cross_fitted(np.column_stack([z["head"], z["anomaly"]]), defective, folds)
    groups = np.array([r["group"] for r in rows])
    tiles = np.array(tile_ids(rows, group_gap))
    result = {
        "images": len(rows),
        "defective_images": int(defective.sum()),
        "tiles": len(set(tiles.tolist())),
        "normalisation": "per fold: robust z-score against the fold's clean validation images "
        "(logit of the head's probability, log of the anomaly distance); fused = sum of the two, "
        "fused_max = the larger; fused_fitted = a logistic combination of the two fitted on the "
        "other folds' out-of-fold rows; head_raw = the head's probabilities pooled as they are",
    }
    for name, scores in z.items():
        result[name] = scorer_summary(
            scores, defective, classes, groups, tiles, free_class, n_resamples, seed
        )
    result["gain_over_head"] = {
        name: paired_gain(z["head"], z[name], defective, groups, tiles, n_resamples, seed)
        for name in ("anomaly", "fused", "fused_max", "fused_fitted")
        if name in z
    }
    return result


def main() -> None:
    """``python -m mtdefect.cv.decision [FOLDS] [BRANCH]``: reports/cv/decision.json from the fold rows
    (head scores and their clean-validation reference) and reports/cv/BRANCH/ (``python -m
    mtdefect.cv.anomaly``; default ``anomaly``) into ``decision_BRANCH.json``. A BRANCH ending in
    ``_unseen`` (``cv.anomaly --unseen``) pairs with the leave-one-class-out rows instead: per left-out
    class, each scorer and the label-free fusions (``left_out_compare``)."""
    import sys

    from mtdefect.cv.fold import CvPaths, score_reference, unseen_config
    from mtdefect.data.folds import fold_manifest_path
    from mtdefect.fileio import write_json_atomic
    from mtdefect.stages._common import run

    def stage(cfg) -> None:
        unseen = branch.endswith("_unseen")
        if unseen:
            cfg = unseen_config(cfg)
        paths = CvPaths.from_cfg(cfg)
        anomaly_dir = Path(cfg.cv.reports_dir) / branch
        if folds:
            jobs: list = folds
        elif unseen:
            jobs = sorted(p.stem for p in anomaly_dir.glob("unseen_*.json"))
        else:
            jobs = list(range(cfg.cv.k))

        def missing_reference(job: int | str) -> list[float]:
            return score_reference(
                paths.model_dir / job_name(job),
                Path(cfg.paths.data_dir),
                fold_manifest_path(paths.manifest_dir, job),
                cfg.data.free_class,
            )

        held_out, reference = branch_rows(paths.rows_dir, anomaly_dir, jobs, missing_reference)
        args = (held_out, reference, *pooling_arguments(cfg))
        summary = left_out_compare(*args) if unseen else compare(*args)
        name = "decision.json" if branch == "anomaly" else f"decision_{branch}.json"
        summary["anomaly_branch"] = branch
        write_json_atomic(Path(cfg.cv.reports_dir) / name, summary, indent=2)
        parts = summary.items() if unseen else [("all", summary)]
        for part, block in parts:
            if not isinstance(block, dict):
                continue
            for scorer in ("head_raw", "head", "anomaly", "fused", "fused_max", "fused_fitted"):
                s = block.get(scorer)
                if s is None:
                    continue
                print(
                    f"decision: {part}: {scorer}: AUROC {s['auroc']['value']} "
                    f"recall@1%FA {s['recall_at_1pct_fa']['value']} "
                    f"tile recall@1%FA {s['tile_recall_at_1pct_fa']['value']}"
                )
            for scorer, gain in block.get("gain_over_head", {}).items():
                image, tile = gain["recall_at_1pct_fa"], gain["tile_recall_at_1pct_fa"]
                print(
                    f"decision: {part}: {scorer} − head: recall@1%FA {image['value']:+.3f} "
                    f"[{image['ci_low']:+.3f}, {image['ci_high']:+.3f}], tile "
                    f"{tile['value']:+.3f} [{tile['ci_low']:+.3f}, {tile['ci_high']:+.3f}]"
                )

    folds = [int(f) for f in sys.argv[1].split(",")] if len(sys.argv) > 1 and sys.argv[1] else None
    branch = sys.argv[2] if len(sys.argv) > 2 else "anomaly"  # or anomaly_fold_encoder, …_unseen
    run(stage, "cv decision")


if __name__ == "__main__":
    main()
