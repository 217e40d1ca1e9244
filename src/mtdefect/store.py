"""Save and load trained models in the BentoML model store (weights + settings + ONNX, no pickle).

Where the store lives: ``$BENTOML_HOME/models`` (the Makefile sets ``BENTOML_HOME=<repo>/.bentoml``;
BentoML's own default is ``~/bentoml``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mtdefect.inference.settings import (
    BACKEND_CALIBRATION_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    ModelSettings,
)

MODEL_NAME = "magnetic-tile-segmenter"
# Every file a model folder may hold; each backend's own calibration (the export stage's
# backend_postprocess.json) travels with it, or INT8 would serve at FP32's thresholds.
MODEL_FILES = (SETTINGS_FILE, WEIGHTS_FILE, ONNX_FILE, ONNX_INT8_FILE, BACKEND_CALIBRATION_FILE)


def save_model_dir(
    model_dir: str | Path,
    name: str = MODEL_NAME,
    labels: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Copy a model folder (settings.json, weights.safetensors, model.onnx[, model.int8.onnx,
    backend_postprocess.json]) into a new store entry.

    Returns the new tag. Every call makes a new version; BentoML never pickles anything here.
    """
    import bentoml

    model_dir = Path(model_dir)
    ModelSettings.load(model_dir)  # refuse a folder that is not a model
    missing = [f for f in (SETTINGS_FILE, WEIGHTS_FILE) if not (model_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {', '.join(missing)}")
    with bentoml.models.create(
        name,
        labels=labels or {},
        metadata=metadata or {},
        module="mtdefect.store",
    ) as entry:
        for file in MODEL_FILES:
            if (model_dir / file).exists():
                shutil.copy2(model_dir / file, Path(entry.path) / file)
        tag = str(entry.tag)
    return tag


def model_path(tag: str = f"{MODEL_NAME}:latest") -> Path:
    """The folder of a stored model (``name:latest`` by default)."""
    import bentoml

    return Path(bentoml.models.get(tag).path)


# metadata key of the serving choice the package stage records: {"precision": "int8" | "fp32",
# "backend": "onnx-int8" | "onnx", "reason": ...}
SERVING_KEY = "serving"


def recorded_backend(tag: str = f"{MODEL_NAME}:latest") -> tuple[str | None, str | None]:
    """(backend, reason) the package stage recorded for this entry, or (None, None) when it recorded
    nothing (older entries) or recorded INT8 for an entry that lacks the INT8 file."""
    import bentoml

    model = bentoml.models.get(tag)
    serving = dict(model.info.metadata or {}).get(SERVING_KEY) or {}
    backend = serving.get("backend")
    if backend == "onnx-int8" and not (Path(model.path) / ONNX_INT8_FILE).exists():
        return None, None
    return backend, serving.get("reason")
