"""Score a split with a predictor, and reduce it to the project's metrics under given postprocess
settings. The one layer below calibration (which calls ``split_metrics`` per candidate setting) and
evaluation (which calls it once, with the model's own settings): a new metric is added here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mtdefect import metrics
from mtdefect.data.source import MASK_THRESHOLD
from mtdefect.data.split import Record
from mtdefect.inference import DecodeLimits, Predictor, decode_image, postprocess
from mtdefect.inference.postprocess import defect_class_of, find_regions
from mtdefect.inference.settings import PostprocessSettings

# the evaluation reads the dataset's own files: no upload limits
UNLIMITED = DecodeLimits(max_bytes=1 << 40, max_pixels=1 << 40, max_side=1 << 20, min_side=1)


def read_image(dataset_dir: str | Path, name: str) -> np.ndarray:
    """A dataset image's file bytes through ``decode_image``, as the service decodes an upload."""
    return decode_image((Path(dataset_dir) / name).read_bytes(), UNLIMITED)


@dataclass
class ScoredImage:
    """One image of a split, with the network's answer before postprocessing."""

    record: Record
    gray: np.ndarray
    truth: np.ndarray  # bool, binarised at MASK_THRESHOLD
    probability: np.ndarray
    class_scores: dict[str, float] = field(default_factory=dict)


def read_truth(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L")) > MASK_THRESHOLD


def score_split(
    predictor: Predictor, dataset_dir: str | Path, records: Sequence[Record]
) -> Iterator[ScoredImage]:
    """Each record's file bytes go through ``decode_image`` and ``Predictor.infer``: the service's path."""
    root = Path(dataset_dir)
    for record in records:
        gray = read_image(root, record.image)
        probability, class_scores = predictor.infer(gray)
        yield ScoredImage(record, gray, read_truth(root / record.mask), probability, class_scores)


def image_row(item: ScoredImage, settings: PostprocessSettings) -> dict:
    """One image's answer under ``settings`` as plain numbers: its pixel counts against the truth
    (pooled Dice adds these up), the false-positive pixels within the 4 % border band, the tile
    score and decision, the decided defect class and the head's top-1 defect class."""
    answer = postprocess(item.probability, settings, item.class_scores)
    predicted, truth = answer.mask > 0, item.truth
    false_positive = predicted & ~truth
    return {
        "image": item.record.image,
        "class": item.record.class_name,
        "tp": int(np.count_nonzero(predicted & truth)),
        "fp": int(np.count_nonzero(false_positive)),
        "fn": int(np.count_nonzero(truth & ~predicted)),
        "fp_border": int(np.count_nonzero(false_positive & metrics.border_band(truth.shape))),
        "score": float(answer.score),
        "defective": bool(answer.defective),
        "defect_class": answer.defect_class,
        "top1": defect_class_of(item.class_scores, settings.free_class) if item.class_scores else None,
    }


def split_metrics(
    items: Sequence[ScoredImage], settings: PostprocessSettings, per_image: bool = False
) -> dict:
    """Every headline number of a split under ``settings`` (what the service would answer):

    - ``dice``/``iou``: pooled over defective tiles, the decision applied (a tile judged clean shows
      an empty mask); ``dice_ungated``: the segmenter alone; ``per_class_dice`` and
      ``mean_class_dice`` (each defect class weighs the same: the small ones count);
    - ``clean_region_rate``: the share of defect-free tiles that show any region (suspects included:
      see ``PostprocessSettings.mask_gate_threshold``), when the split has defect-free tiles;
    - ``detection``: recall, false-alarm rate, AUROC of the tile score;
    - ``classification`` (models with a tile head): top-1 accuracy of the defect class on defective
      tiles, its per-class precision/recall and confusion matrix; ``confusion``: all tiles, the
      decision applied (a tile judged clean is ``free_class``);
    - ``per_image`` rows when asked (evaluation's plots)."""
    free = settings.free_class
    pooled, ungated, per_class = metrics.PixelCounts(), metrics.PixelCounts(), {}
    scores, flagged, defective, shown, rows = [], [], [], [], []
    actual, decided, top1_actual, top1 = [], [], [], []
    for item in items:
        name = item.record.class_name
        answer = postprocess(item.probability, settings, item.class_scores)
        is_defective = name != free
        if is_defective:
            pooled.add(answer.mask, item.truth)
            ungated.add(
                find_regions(item.probability, settings.threshold, settings.min_region_area)[0], item.truth
            )
            per_class.setdefault(name, metrics.PixelCounts()).add(answer.mask, item.truth)
        scores.append(answer.score)
        flagged.append(answer.defective)
        shown.append(bool(answer.regions))
        defective.append(is_defective)
        if item.class_scores:
            actual.append(name)
            decided.append(answer.defect_class if answer.defective else free)
            if is_defective:
                top1_actual.append(name)
                top1.append(defect_class_of(item.class_scores, free))
        if per_image:
            rows.append(
                {
                    "image": item.record.image,
                    "class": name,
                    "dice": metrics.dice(answer.mask, item.truth),
                    "score": answer.score,
                    "defective": answer.defective,
                    "defect_class": answer.defect_class,
                }
            )
    class_dice = {c: n.dice for c, n in sorted(per_class.items())}
    result = {
        "dice": pooled.dice,
        "iou": pooled.iou,
        "dice_ungated": ungated.dice,
        "per_class_dice": class_dice,
        "mean_class_dice": float(np.mean(list(class_dice.values()))) if class_dice else float("nan"),
        "detection": {
            **metrics.detection_rates(np.array(flagged), np.array(defective)),
            "auroc": metrics.binary_auroc(np.array(scores), np.array(defective)),
        },
    }
    if not all(defective):
        free_flags = np.array(flagged)[~np.array(defective)]
        result["free_clean_rate"] = float(1.0 - free_flags.mean())
        result["clean_region_rate"] = float(np.array(shown)[~np.array(defective)].mean())
    if actual:
        names = list(items[0].class_scores)
        defect_names = [c for c in names if c != free]
        result["classification"] = metrics.classification_report(top1_actual, top1, defect_names)
        result["confusion"] = metrics.classification_report(actual, decided, names)
    if per_image:
        result["per_image"] = rows
        result["scores"] = scores
        result["labels"] = defective
    return result
