"""Which fusion of a tile's view scores rejects most defective tiles at ≤ 1 % of clean tiles, under CV.

Issue #21 asks for one decision per physical tile from its lightings, fused by "median, mean or a small
combiner fitted on held-out tiles: measure". This measures them on the out-of-fold rows of the folds
(``cv.rows_dir``), on the decision's scale: each fold's scores normalised against that fold's clean
inner-validation images (``cv.decision.normalised``), so the folds pool. Candidates: the service's
own fusions (``inference.multiview.VIEW_FUSIONS``), a few it does not serve (``CANDIDATES``), and
``fitted``: a logistic combination of the sorted views' statistics (min, median, mean, max),
cross-fitted over folds (each fold's tiles scored by weights fitted on the other folds' tiles).
Intervals resample tile groups.

    python -m mtdefect.cv.view_fusion [--rows DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mtdefect.cv.decision import cross_fitted, normalised
from mtdefect.cv.pool import pooling_arguments, tile_detector, tile_views
from mtdefect.inference.multiview import VIEW_FUSIONS

CANDIDATES: dict[str, Callable[[np.ndarray], float]] = {
    "min": lambda s: float(np.min(s)),
    "second_highest": lambda s: float(np.sort(s)[-2]) if len(s) > 1 else float(s[0]),
    "trimmed_mean": lambda s: float(np.mean(np.sort(s)[1:-1])) if len(s) > 2 else float(np.median(s)),
}


def view_statistics(scores: np.ndarray) -> np.ndarray:
    """What the fitted combiner sees of one tile's view scores."""
    return np.array([scores.min(), np.median(scores), scores.mean(), scores.max()])


def compare_fusions(
    rows: Sequence[dict],
    free_class: str,
    group_gap: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
    max_rate: float = 0.01,
) -> dict:
    """``rows``: one per held-out image with ``class``, ``image``, ``group``, ``fold`` and ``z`` (its
    score on the pooled scale). Each fusion's tile AUROC and recall at ≤ ``max_rate`` of clean tiles
    rejected, with 95 % intervals by tile group."""
    z = np.array([r["z"] for r in rows], dtype=np.float64)
    views, defective, groups = tile_views(rows, free_class, group_gap)
    folds = np.array([rows[v[0]]["fold"] for v in views])
    fused = {name: np.array([f(z[v]) for v in views]) for name, f in {**VIEW_FUSIONS, **CANDIDATES}.items()}
    if len(set(folds.tolist())) > 1:
        features = np.array([view_statistics(z[v]) for v in views])
        fused["fitted"] = cross_fitted(features, defective, folds)
    keys = ("tile_auroc", "tile_recall_at_1pct_fa")
    return {
        "tiles": len(views),
        "defective_tiles": int(defective.sum()),
        "served": list(VIEW_FUSIONS),
        "fusions": {
            name: tile_detector(scores, defective, groups, n_resamples, seed + 1, max_rate, keys)
            for name, scores in fused.items()
        },
    }


def pooled_rows(rows_dir: Path, k: int) -> list[dict]:
    """Every fold's held-out rows with ``z``: the decision's score (``score``) normalised against the
    fold's clean validation images (``reference_scores``, written with the rows)."""
    out = []
    for fold in range(k):
        result = json.loads((rows_dir / f"fold_{fold}.json").read_text())
        if result.get("reference_scores") is None:
            raise ValueError(f"{rows_dir / f'fold_{fold}.json'} holds no clean validation reference scores")
        scores = np.array([r["score"] for r in result["rows"]], dtype=np.float64)
        z = normalised("head", scores, np.array(result["reference_scores"], dtype=np.float64))
        out += [{**row, "fold": fold, "z": float(v)} for row, v in zip(result["rows"], z)]
    return out


def main(argv: list[str] | None = None) -> None:
    from mtdefect.fileio import write_json_atomic
    from mtdefect.stages._common import run

    parser = argparse.ArgumentParser(
        prog="python -m mtdefect.cv.view_fusion",
        description="Compare fusions of a tile's view scores on the folds' out-of-fold rows.",
    )
    parser.add_argument("--rows", help="fold rows folder (default: cv.rows_dir)")
    parser.add_argument("--out", help="summary file (default: <cv.reports_dir>/view_fusion.json)")
    args = parser.parse_args(argv)

    def stage(cfg) -> None:
        rows_dir = Path(args.rows or cfg.cv.rows_dir)
        if not rows_dir.is_dir():
            raise FileNotFoundError(f"no fold rows folder {rows_dir} (run the cv stage first)")
        rows = pooled_rows(rows_dir, int(cfg.cv.k))
        summary = compare_fusions(rows, *pooling_arguments(cfg))
        summary["rows"] = str(rows_dir)
        out = Path(args.out or Path(cfg.cv.reports_dir) / "view_fusion.json")
        write_json_atomic(out, summary, indent=2)
        for name, entry in summary["fusions"].items():
            recall = entry["tile_recall_at_1pct_fa"]
            print(
                f"view fusion {name}: tile AUROC {entry['tile_auroc']['value']} tile recall@1%FA "
                f"{recall['value']} [{recall['ci_low']}, {recall['ci_high']}]"
            )

    run(stage, "cv view_fusion")


if __name__ == "__main__":
    main()
