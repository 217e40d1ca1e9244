"""Evaluate a model folder on a split, through the exact path the service uses (decode → predict)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from mtdefect import metrics
from mtdefect.data.split import Record, read_manifest
from mtdefect.inference import Predictor, decode_image, postprocess
from mtdefect.inference.postprocess import find_regions
from mtdefect.inference.decode import DecodeLimits
from mtdefect.inference.overlay import panel

UNLIMITED = DecodeLimits(max_bytes=1 << 40, max_pixels=1 << 40, max_side=1 << 20, min_side=1)


@dataclass
class ScoredImage:
    record: Record
    gray: np.ndarray
    truth: np.ndarray  # bool
    probability: np.ndarray


def read_truth(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L")) > 127


def iter_probabilities(predictor: Predictor, dataset_dir: str | Path, records: list[Record]) -> Iterator[ScoredImage]:
    """Each record's file bytes go through ``decode_image`` and ``Predictor.probability``: the service's path."""
    root = Path(dataset_dir)
    for record in records:
        gray = decode_image((root / record.image).read_bytes(), UNLIMITED)
        yield ScoredImage(record, gray, read_truth(root / record.mask), predictor.probability(gray))


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, allow_nan=True)
    os.replace(tmp, path)


def evaluate(
    model_dir: str | Path,
    dataset_dir: str | Path,
    manifest: str | Path,
    reports_dir: str | Path,
    split: str = "test",
    backend: str = "torch",
    n_overlays: int = 12,
    worst_n: int = 6,
) -> dict:
    """Write ``metrics.json``, ``plots/{roc,pr,per_class_dice,per_image}.json`` and ``overlays/*.png``."""
    reports_dir = Path(reports_dir)
    predictor = Predictor.from_dir(model_dir, backend=backend)
    records = read_manifest(manifest, split)
    if not records:
        raise ValueError(f"the manifest {manifest} has no {split!r} images")
    acc = metrics.EvaluationAccumulator()
    ungated = metrics.PixelCounts()
    per_image = []
    panels: dict[str, np.ndarray] = {}
    sample_every = max(len(records) // max(n_overlays, 1), 1)
    for i, item in enumerate(iter_probabilities(predictor, dataset_dir, records)):
        prediction = postprocess(item.probability, predictor.settings.postprocess)
        if item.record.class_name != acc.free_class:  # the segmenter alone, before the tile decision
            post = predictor.settings.postprocess
            ungated.add(find_regions(item.probability, post.threshold, post.min_region_area)[0] > 0, item.truth)
        image_dice = acc.add(item.record.class_name, prediction.mask, item.truth, prediction.score, prediction.defective)
        per_image.append({"image": item.record.image, "class": item.record.class_name, "dice": image_dice,
                          "score": prediction.score, "defective": prediction.defective})
        truth_mask = item.truth.astype(np.uint8) * 255
        if i % sample_every == 0 and len(panels) < n_overlays:
            panels[f"sample_{i:03d}_{Path(item.record.image).stem}"] = panel(item.gray, truth_mask, prediction.mask)
        per_image[-1]["_panel"] = (item.gray, truth_mask, prediction.mask) if worst_n else None
    summary = acc.summary()
    labels = np.array(acc.is_defective)
    scores = np.array(acc.scores)
    worst = sorted((p for p in per_image if p["class"] != acc.free_class or p["defective"]), key=lambda p: p["dice"])
    for rank, item in enumerate(worst[:worst_n]):
        panels[f"worst_{rank:02d}_{Path(item['image']).stem}"] = panel(*item["_panel"])
    for item in per_image:
        item.pop("_panel", None)
    result = {
        "test": {
            **summary,
            "dice_ungated": ungated.dice,
            "images": len(records),
            "threshold": predictor.settings.postprocess.threshold,
            "min_region_area": predictor.settings.postprocess.min_region_area,
            "score_window": predictor.settings.postprocess.score_window,
            "decision_threshold": predictor.settings.postprocess.decision_threshold,
            "test_time_flips": "+".join(predictor.settings.test_time_flips) or "none",
        }
    }
    _write_json(reports_dir / "metrics.json", result)
    plots = reports_dir / "plots"
    _write_json(plots / "roc.json", metrics.roc_curve(scores, labels))
    _write_json(plots / "pr.json", metrics.precision_recall_curve(scores, labels))
    _write_json(plots / "per_class_dice.json",
                [{"class": k, "dice": v} for k, v in summary["per_class_dice"].items()])
    _write_json(plots / "per_image.json", per_image)
    overlay_dir = reports_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    for old in overlay_dir.glob("*.png"):
        old.unlink()
    for name, picture in panels.items():
        Image.fromarray(picture).save(overlay_dir / f"{name}.png")
    return result
