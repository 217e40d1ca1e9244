"""Network output → probability map at the input's size → mask, regions, score and a decision."""
from __future__ import annotations

from dataclasses import dataclass, field

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

    def to_dict(self) -> dict:
        return {"bbox": list(self.bbox), "area": self.area, "score": round(self.score, 6)}


@dataclass
class Prediction:
    """Everything the service and the evaluation report about one image."""

    probability: np.ndarray  # HxW float32 in [0, 1], input size
    mask: np.ndarray  # HxW uint8 in {0, 255}, input size
    score: float  # image-level defect score in [0, 1] (see PostprocessSettings.score_window)
    defective: bool  # the decision (see PostprocessSettings.decision_threshold)
    regions: list[Region] = field(default_factory=list)

    @property
    def defect_area_fraction(self) -> float:
        return float((self.mask > 0).mean()) if self.mask.size else 0.0


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))).astype(np.float32)


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


def postprocess(probability: np.ndarray, settings: PostprocessSettings) -> Prediction:
    """Threshold, drop small regions, score the image, decide (see PostprocessSettings)."""
    mask, regions = find_regions(probability, settings.threshold, settings.min_region_area)
    score = image_score(probability, settings.score_window)
    if settings.decision_threshold is None:
        defective = bool(regions)
    else:
        defective = score >= settings.decision_threshold
        if not defective and regions:  # a tile judged clean shows no defects
            mask, regions = np.zeros_like(mask), []
    return Prediction(probability=probability, mask=mask, score=score, defective=defective, regions=regions)
