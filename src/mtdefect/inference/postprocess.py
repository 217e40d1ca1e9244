"""Network output → probability map at the input's size → mask, regions, score and a decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from mtdefect.inference.preprocess import InputGeometry
from mtdefect.inference.settings import PostprocessSettings

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    bbox: tuple[int, int, int, int]  # x, y, width, height in input pixels
    area: int
    score: float  # max probability inside the region
    class_name: str | None = None  # the tile's defect class, carried to its regions
    class_score: float | None = None  # the tile head's probability of that class

    def to_dict(self) -> dict:
        return {
            "bbox": list(self.bbox),
            "area": self.area,
            "score": round(self.score, 6),
            "class": self.class_name,
            "class_score": None if self.class_score is None else round(self.class_score, 6),
        }


@dataclass
class Prediction:
    """Everything the service and the evaluation report about one image."""

    probability: np.ndarray  # HxW float32 in [0, 1], input size
    mask: np.ndarray  # HxW uint8 in {0, 255}, input size
    score: float  # image-level defect score in [0, 1] (see PostprocessSettings.score_window)
    defective: bool  # the decision (see PostprocessSettings.decision_threshold)
    regions: list[Region] = field(default_factory=list)
    class_scores: dict[str, float] = field(default_factory=dict)  # tile head: probability per class
    defect_class: str | None = None  # the most probable defect class of a tile judged defective

    @property
    def defect_area_fraction(self) -> float:
        return float((self.mask > 0).mean()) if self.mask.size else 0.0


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))).astype(np.float32)


def softmax_scores(tile_logits: np.ndarray | None, class_names: Sequence[str]) -> dict[str, float]:
    """A K-vector of tile logits → {class name: probability}; {} without a head."""
    if tile_logits is None or not len(class_names):
        return {}
    logits = np.asarray(tile_logits, dtype=np.float64).reshape(-1)
    if logits.size != len(class_names):
        raise ValueError(f"the tile head gives {logits.size} logits for {len(class_names)} class names")
    exp = np.exp(logits - logits.max())
    probs = exp / exp.sum()
    return {name: float(p) for name, p in zip(class_names, probs)}


def defect_probability(logits: np.ndarray, free_index: int) -> np.ndarray:
    """P(some defect) from tile-head logits (…, K): the sum of the defect classes' softmax
    probabilities, in float64.

    Not ``1 − P(free)``: where P(free) rounds to 1 that difference is exactly 0 (from about 6e-8 in
    float32, 1e-16 in float64), so confident clean tiles tie at zero and the spread a threshold or a
    z-score is set on collapses. The sum of the small terms keeps their relative precision."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    defects = np.delete(e, free_index, axis=-1).sum(axis=-1)
    return defects / (defects + e[..., free_index])


def summed_defect_probability(class_scores: Mapping[str, float], free_class: str) -> float:
    """``defect_probability`` of a tile's {class: probability} (``softmax_scores``, float64): its
    defect classes' probabilities summed."""
    return float(sum(p for name, p in class_scores.items() if name != free_class))


def defect_log_odds(score: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)) of defect probabilities, finite at both ends of float64 (what ranks and
    normalises head scores: ``cv.decision``)."""
    limits = np.finfo(np.float64)
    p = np.clip(np.asarray(score, dtype=np.float64), limits.tiny, 1.0 - limits.epsneg)
    return np.log(p) - np.log1p(-p)


def tile_score(
    probability: np.ndarray, settings: PostprocessSettings, class_scores: Mapping[str, float] | None = None
) -> float:
    """The image score the decision compares with ``decision_threshold`` (``settings.score_source``):
    the head's P(some defect), summed over the defect classes (``defect_probability``), or the mask's."""
    if settings.score_source == "head":
        if not class_scores or settings.free_class not in class_scores:
            raise ValueError(f"score_source 'head' needs the tile head's {settings.free_class!r} probability")
        return float(np.clip(summed_defect_probability(class_scores, settings.free_class), 0.0, 1.0))
    return image_score(probability, settings.score_window)


def defect_class_of(class_scores: Mapping[str, float], free_class: str) -> str | None:
    """The most probable class other than ``free_class`` (None without class scores)."""
    defects = {name: p for name, p in class_scores.items() if name != free_class}
    return max(defects, key=defects.get) if defects else None


def restore_probability(logits: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Padded-size logits (HxW) → probability map at the original input size."""
    height, width = geometry.scaled
    prob = sigmoid(logits[:height, :width])
    if prob.shape != tuple(geometry.original):
        oh, ow = geometry.original
        prob = np.asarray(Image.fromarray(prob).resize((ow, oh), Image.BILINEAR), dtype=np.float32)
        prob = np.clip(prob, 0.0, 1.0)
    return prob


def image_score(probability: np.ndarray, window: int = 1) -> float:
    """Highest mean probability over any ``window`` × ``window`` window (clipped to the image)."""
    if not probability.size:
        return 0.0
    if window <= 1:
        return float(probability.max())
    size = (min(window, probability.shape[0]), min(window, probability.shape[1]))
    smoothed = ndimage.uniform_filter(probability.astype(np.float32, copy=False), size=size, mode="nearest")
    return float(np.clip(smoothed.max(), 0.0, 1.0))


def find_regions(probability: np.ndarray, threshold: float, min_area: int) -> tuple[np.ndarray, list[Region]]:
    """Mask (uint8 0/255) and regions: 8-connected pixels ≥ threshold, regions under min_area dropped."""
    binary = probability >= threshold
    labels, count = ndimage.label(binary, structure=EIGHT_CONNECTED)
    regions: list[Region] = []
    keep = np.zeros(count + 1, dtype=bool)
    if count:
        # per-region sums and maxima over the foreground pixels only: ~4x faster than
        # ndimage.sum_labels/maximum on tiles with many regions, same numbers
        fg = labels[binary]
        areas = np.bincount(fg, minlength=count + 1)
        maxima = np.zeros(count + 1, dtype=probability.dtype)
        np.maximum.at(maxima, fg, probability[binary])
        for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
            if areas[i] < max(min_area, 1):
                continue
            keep[i] = True
            bbox = (int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start))
            regions.append(Region(bbox=bbox, area=int(areas[i]), score=float(maxima[i])))
    mask = (keep[labels] * 255).astype(np.uint8)
    return mask, regions


def gate_score(probability: np.ndarray, settings: PostprocessSettings, score: float) -> float:
    """The score the mask gate compares with ``mask_gate_threshold``: the decision's ``score``, or the
    mask's windowed probability (``mask_gate_window``)."""
    if settings.mask_gate_window is None:
        return score
    return image_score(probability, settings.mask_gate_window)


def passes_gate(score, gate_value, settings: PostprocessSettings):
    """The mask gate's rule, on one tile's numbers or on arrays of them: a tile shows its regions
    always without a decision threshold, always when judged defective (``score`` reaches the decision
    threshold), else when its gate score (``gate_value``, from ``gate_score``) reaches
    ``mask_gate_threshold`` (None: never)."""
    if settings.decision_threshold is None:
        return np.ones_like(np.asarray(score), dtype=bool) if np.ndim(score) else True
    passed = np.asarray(score) >= settings.decision_threshold
    if settings.mask_gate_threshold is not None:
        passed = passed | (np.asarray(gate_value) >= settings.mask_gate_threshold)
    return passed if np.ndim(score) else bool(passed)


def shows_regions(probability: np.ndarray, settings: PostprocessSettings, score: float) -> bool:
    """Whether one tile shows its regions (``passes_gate``)."""
    if settings.decision_threshold is not None and score >= settings.decision_threshold:
        return True  # judged defective: no gate score needed
    return passes_gate(score, gate_score(probability, settings, score), settings)


def postprocess(
    probability: np.ndarray, settings: PostprocessSettings, class_scores: Mapping[str, float] | None = None
) -> Prediction:
    """Threshold, drop small regions, score the image, decide (see PostprocessSettings). A tile that
    does not pass the mask gate (``shows_regions``) shows no regions. With the tile head's
    ``class_scores``, a tile judged defective gets the most probable defect class, and the regions
    shown carry that class."""
    mask, regions = find_regions(probability, settings.threshold, settings.min_region_area)
    score = tile_score(probability, settings, class_scores)
    if settings.decision_threshold is None:
        defective = bool(regions)
    else:
        defective = score >= settings.decision_threshold
    if regions and not shows_regions(probability, settings, score):
        mask, regions = np.zeros_like(mask), []
    scores = dict(class_scores or {})
    defect_class = defect_class_of(scores, settings.free_class) if defective else None
    region_class = defect_class_of(scores, settings.free_class) if regions else None
    if region_class is not None:
        regions = [replace(r, class_name=region_class, class_score=scores[region_class]) for r in regions]
    return Prediction(
        probability=probability,
        mask=mask,
        score=score,
        defective=defective,
        regions=regions,
        class_scores=scores,
        defect_class=defect_class,
    )
