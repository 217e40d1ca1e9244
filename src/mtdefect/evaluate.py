"""Evaluate a model folder on a split through the service's path (decode → predict → postprocess),
scored by ``scoring.split_metrics``, the layer calibration uses too."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mtdefect import metrics
from mtdefect.data.split import read_manifest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference import Predictor, postprocess
from mtdefect.inference.overlay import panel
from mtdefect.inference.settings import BACKEND_CALIBRATION_FILE
from mtdefect.scoring import score_split, split_metrics


def confusion_rows(confusion: dict) -> list[dict[str, str]]:
    """A confusion matrix as one {"actual", "predicted"} row per tile (DVC's confusion template)."""
    labels = confusion["labels"]
    return [
        {"actual": labels[i], "predicted": labels[j]}
        for i, row in enumerate(confusion["matrix"])
        for j, count in enumerate(row)
        for _ in range(count)
    ]


@contextlib.contextmanager
def with_exports(model_dir: str | Path, onnx_dir: str | Path | None) -> Iterator[Path]:
    """The model folder, or (when ``onnx_dir`` is given) a temporary folder of links to its files
    and to the ONNX exports of ``onnx_dir`` (model.onnx, model.int8.onnx and INT8's own calibration),
    so every backend loads as it is served."""
    if onnx_dir is None or not Path(onnx_dir).is_dir():
        yield Path(model_dir)
        return
    with tempfile.TemporaryDirectory(prefix="mt-eval-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        exports = [*Path(onnx_dir).glob("*.onnx"), Path(onnx_dir) / BACKEND_CALIBRATION_FILE]
        for source in [*Path(model_dir).iterdir(), *exports]:
            if source.is_file() and not (folder / source.name).exists():
                (folder / source.name).symlink_to(source.resolve())
        yield folder


def evaluate_backends(
    model_dir: str | Path,
    onnx_dir: str | Path | None,
    dataset_dir: str | Path,
    manifest: str | Path,
    reports_dir: str | Path,
    backends: Sequence[str],
    reference: str = "onnx",
    split: str = "test",
) -> dict[str, dict]:
    """Score the split once per backend in ``backends`` (e.g. ``onnx-int8``) and write
    ``metrics_<backend>.json`` each: the same headline numbers as ``metrics.json`` plus ``parity``
    against ``reference`` (Dice/AUROC deltas, share of tiles with the same decision; see
    ``inference.quantize.parity_report``), scored in the same run."""
    from mtdefect.inference.quantize import parity_report

    reports_dir = Path(reports_dir)
    records = read_manifest(manifest, split)
    if not records:
        raise ValueError(f"the manifest {manifest} has no {split!r} images")
    out = {}
    with with_exports(model_dir, onnx_dir) as folder:
        scored = {}
        for backend in dict.fromkeys([reference, *backends]):
            predictor = Predictor.from_dir(folder, backend=backend)
            items = list(score_split(predictor, dataset_dir, records))
            result = split_metrics(items, predictor.settings.postprocess, per_image=True)
            decisions = [row["defective"] for row in result.pop("per_image")]
            result.pop("scores"), result.pop("labels")
            result["decision_threshold"] = predictor.settings.postprocess.decision_threshold
            scored[backend] = (predictor.backend, result, decisions)
        ref_name, ref, ref_decisions = scored[reference]
        for backend in backends:
            name, result, decisions = scored[backend]
            summary = {
                **result,
                "images": len(records),
                "backend": name,
                "parity": {"reference": ref_name, **parity_report(ref, result, ref_decisions, decisions)},
            }
            write_json_atomic(reports_dir / f"metrics_{backend}.json", {"test": summary}, indent=2)
            out[backend] = summary
    return out


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
    """Write ``metrics.json``, ``plots/{roc,pr,per_class_dice,per_image,confusion}.json`` and
    ``overlays/*.png``."""
    reports_dir = Path(reports_dir)
    predictor = Predictor.from_dir(model_dir, backend=backend)
    post = predictor.settings.postprocess
    records = read_manifest(manifest, split)
    if not records:
        raise ValueError(f"the manifest {manifest} has no {split!r} images")
    items = list(score_split(predictor, dataset_dir, records))
    result = split_metrics(items, post, per_image=True)
    per_image, scores, labels = result.pop("per_image"), result.pop("scores"), result.pop("labels")
    confusion = result.get("confusion")
    summary = {
        **result,
        "images": len(records),
        "threshold": post.threshold,
        "min_region_area": post.min_region_area,
        "score_source": post.score_source,
        "score_window": post.score_window,
        "decision_threshold": post.decision_threshold,
        "test_time_flips": "+".join(predictor.settings.test_time_flips) or "none",
        "backend": predictor.backend,
    }
    write_json_atomic(reports_dir / "metrics.json", {"test": summary}, indent=2)
    plots = reports_dir / "plots"
    write_json_atomic(plots / "roc.json", metrics.roc_curve(np.array(scores), np.array(labels)), indent=2)
    write_json_atomic(
        plots / "pr.json", metrics.precision_recall_curve(np.array(scores), np.array(labels)), indent=2
    )
    write_json_atomic(
        plots / "per_class_dice.json",
        [{"class": k, "dice": v} for k, v in result["per_class_dice"].items()],
        indent=2,
    )
    write_json_atomic(plots / "per_image.json", per_image, indent=2)
    write_json_atomic(plots / "confusion.json", confusion_rows(confusion) if confusion else [], indent=2)
    write_overlays(items, per_image, predictor, reports_dir / "overlays", n_overlays, worst_n)
    return {"test": summary}


def write_overlays(
    items, per_image: list[dict], predictor: Predictor, overlay_dir: Path, n_overlays: int, worst_n: int
) -> None:
    """Sampled panels (every k-th image) and the ``worst_n`` lowest-Dice panels among defective or
    flagged tiles: image | truth | prediction."""
    post = predictor.settings.postprocess
    panels: dict[str, np.ndarray] = {}
    sample_every = max(len(items) // max(n_overlays, 1), 1)
    chosen = [i for i in range(0, len(items), sample_every)][:n_overlays]
    candidates = [i for i, row in enumerate(per_image) if row["class"] != post.free_class or row["defective"]]
    worst = sorted(candidates, key=lambda i: per_image[i]["dice"])[:worst_n]
    # sample panels are named by the image's position in the split, worst ones by their rank
    named = [(f"sample_{i:03d}", i) for i in chosen] + [
        (f"worst_{rank:02d}", i) for rank, i in enumerate(worst)
    ]
    for prefix, i in named:
        item = items[i]
        answer = postprocess(item.probability, post, item.class_scores)
        panels[f"{prefix}_{Path(item.record.image).stem}"] = panel(
            item.gray, item.truth.astype(np.uint8) * 255, answer.mask
        )
    overlay_dir.mkdir(parents=True, exist_ok=True)
    for old in overlay_dir.glob("*.png"):
        old.unlink()
    for name, picture in panels.items():
        Image.fromarray(picture).save(overlay_dir / f"{name}.png")
