"""One decision per physical tile from the photographs of its lightings (issue #21).

A station photographs each tile under up to six lightings, and a defect one light hides another
shows. Each photograph ("view") goes through the single-image path (``Predictor`` → ``postprocess``);
the tile's score is a fusion of the view scores and its decision compares that score with the tile
threshold of the settings (``PostprocessSettings.view_fusion`` / ``views_decision_threshold``).
Cross-validation pools the out-of-fold view scores with the same fusions (``cv.pool.tile_level``),
and calibration chooses the tile threshold with them: one implementation for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mtdefect.inference.postprocess import Prediction
from mtdefect.inference.settings import VIEW_FUSION_NAMES, PostprocessSettings

MAX_VIEWS = 6  # lightings per tile in the archive (exp1 ... exp6)

VIEW_FUSIONS: dict[str, Callable[[np.ndarray], float]] = {
    "median": lambda s: float(np.median(s)),
    "mean": lambda s: float(np.mean(s)),
    "max": lambda s: float(np.max(s)),
}
assert tuple(VIEW_FUSIONS) == VIEW_FUSION_NAMES


def fuse_view_scores(scores: Sequence[float], fusion: str = "median") -> float:
    """The tile score from its views' scores."""
    if not len(scores):
        raise ValueError("a tile needs at least one view")
    if fusion not in VIEW_FUSIONS:
        raise ValueError(f"view fusion must be one of {VIEW_FUSION_NAMES}, got {fusion!r}")
    return VIEW_FUSIONS[fusion](np.asarray(scores, dtype=np.float64))


def tile_threshold(settings: PostprocessSettings) -> float | None:
    """The threshold the fused score is compared with (None: no score threshold, see ``decide_tile``)."""
    if settings.views_decision_threshold is not None:
        return settings.views_decision_threshold
    return settings.decision_threshold


@dataclass(frozen=True)
class TileDecision:
    defective: bool
    score: float  # the fused view score
    fusion: str
    threshold: float | None
    defect_class: str | None  # the class of the highest-scoring view judged defective
    views: tuple[Prediction, ...]


def decide_tile(views: Sequence[Prediction], settings: PostprocessSettings) -> TileDecision:
    """The tile decision from its views' predictions. Without any score threshold (a mask-decided
    model without calibration) the tile is defective when at least half of its views are."""
    if not views:
        raise ValueError("a tile needs at least one view")
    score = fuse_view_scores([v.score for v in views], settings.view_fusion)
    threshold = tile_threshold(settings)
    if threshold is None:
        defective = 2 * sum(v.defective for v in views) >= len(views)
    else:
        defective = bool(score >= threshold)
    flagged = [v for v in views if v.defective and v.defect_class is not None]
    defect_class = max(flagged, key=lambda v: v.score).defect_class if defective and flagged else None
    return TileDecision(defective, score, settings.view_fusion, threshold, defect_class, tuple(views))
