"""Network output → probability map at the input's size → mask, regions and a decision."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from mtdefect.inference.preprocess import InputGeometry
from mtdefect.inference.settings import PostprocessSettings


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
    score: float  # image-level defect probability: max pixel probability
    defective: bool  # at least one region survived the threshold and the minimum area
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


def postprocess(probability: np.ndarray, settings: PostprocessSettings) -> Prediction:
    """Threshold, drop regions below the minimum area, describe what is left."""
    binary = probability >= settings.threshold
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    regions: list[Region] = []
    keep = np.zeros(count + 1, dtype=bool)
    if count:
        index = np.arange(1, count + 1)
        areas = ndimage.sum_labels(binary, labels, index).astype(np.int64)
        maxima = ndimage.maximum(probability, labels, index)
        slices = ndimage.find_objects(labels)
        for i, (area, peak, sl) in enumerate(zip(areas, maxima, slices), start=1):
            if area < max(settings.min_region_area, 1):
                continue
            keep[i] = True
            ys, xs = sl
            regions.append(
                Region(
                    bbox=(int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start)),
                    area=int(area),
                    score=float(peak),
                )
            )
    mask = (keep[labels] * 255).astype(np.uint8)
    score = float(probability.max()) if probability.size else 0.0
    return Prediction(probability=probability, mask=mask, score=score, defective=bool(regions), regions=regions)
