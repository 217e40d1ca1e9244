"""The model as the service holds it: loaded once, proven by a warm-up prediction, then shared.

Loading never raises: a missing or corrupt model leaves ``ready`` False and ``problem`` set, the
service logs one line and answers 503 until it is replaced (``/readyz`` stays 503 meanwhile).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from mtdefect.inference import DecodeLimits, Prediction, Predictor
from mtdefect.inference.predictor import Check, _cuda_available
from mtdefect.serving.config import ServeConfig
from mtdefect.serving.errors import one_line

# A child of "bentoml" so that BentoML's server logging config shows it (INFO included).
logger = logging.getLogger("bentoml.serve.mtdefect")

WARMUP_SHAPE = (96, 160)  # odd-sized on purpose: exercises padding and cropping


class ModelUnavailable(RuntimeError):
    pass


def warm_up(predictor: Predictor) -> float:
    """One prediction on a synthetic tile; raises if the model answers nonsense. Returns its ms."""
    height, width = WARMUP_SHAPE
    yy, xx = np.mgrid[:height, :width]
    gray = np.full(WARMUP_SHAPE, 110, dtype=np.uint8)
    gray[(yy - height // 2) ** 2 + (xx - width // 3) ** 2 < 100] = 230
    prediction, ms = predictor.predict(gray)
    check_prediction(prediction, WARMUP_SHAPE)
    return ms


def check_prediction(prediction: Prediction, shape: tuple[int, int]) -> None:
    """Refuse outputs that would be garbage to a client: wrong size, NaN, out-of-range values."""
    if prediction.mask.shape != tuple(shape) or prediction.probability.shape != tuple(shape):
        raise ModelUnavailable(f"model output has shape {prediction.mask.shape}, expected {tuple(shape)}")
    if not np.isfinite(prediction.probability).all():
        raise ModelUnavailable("model output contains NaN or infinite values")
    if not 0.0 <= prediction.score <= 1.0:
        raise ModelUnavailable(f"model score {prediction.score} outside [0, 1]")


@dataclass
class ModelRuntime:
    config: ServeConfig
    predictor: Predictor | None = None
    tag: str | None = None
    problem: str | None = "model not loaded yet"  # client-safe reason while not ready
    load_seconds: float = 0.0
    warmup_ms: float = 0.0
    limits: DecodeLimits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = DecodeLimits(max_bytes=self.config.max_bytes, max_pixels=self.config.max_pixels)

    @property
    def ready(self) -> bool:
        return self.predictor is not None and self.problem is None

    @property
    def threshold(self) -> float:
        assert self.predictor is not None
        return float(self.predictor.settings.postprocess.threshold)

    @property
    def decision_threshold(self) -> float | None:
        assert self.predictor is not None
        value = self.predictor.settings.postprocess.decision_threshold
        return None if value is None else float(value)

    @property
    def mask_gate_threshold(self) -> float | None:
        """The gate score from which a tile judged clean shows its regions (None: it never does)."""
        assert self.predictor is not None
        value = self.predictor.settings.postprocess.mask_gate_threshold
        return None if value is None else float(value)

    @property
    def mask_gate_window(self) -> int | None:
        assert self.predictor is not None
        return self.predictor.settings.postprocess.mask_gate_window

    @property
    def score_source(self) -> str:
        assert self.predictor is not None
        return self.predictor.settings.postprocess.score_source

    def load(self) -> ModelRuntime:
        """Resolve the tag in the model store, build the predictor, warm it up. Never raises."""
        from mtdefect import store

        start = time.perf_counter()
        try:
            path = store.model_path(self.config.model_tag)
            tag = f"{path.parent.name}:{path.name}"
            backend, why = self.config.backend, None
            if backend == "auto" and not _cuda_available():  # follow the package stage's recorded choice
                backend, why = store.recorded_backend(self.config.model_tag)
                backend = backend or "auto"
            predictor = Predictor.from_dir(
                path, backend=backend, threads=self.config.threads, window=self.config.window
            )
            warmup_ms = warm_up(predictor)
        except Exception as exc:  # noqa: BLE001 — anything at all: the service must stay up and say why
            self.predictor = None
            self.problem = f"model {self.config.model_tag} could not be loaded (see server log)"
            logger.error(
                "NOT READY: model %s unavailable: %s", self.config.model_tag, one_line(exc, with_type=True)
            )
            return self
        self.predictor, self.tag, self.problem = predictor, tag, None
        self.load_seconds, self.warmup_ms = time.perf_counter() - start, warmup_ms
        logger.info(
            "ready: model %s on %s (load %.1f s, warm-up %.0f ms)%s",
            tag,
            predictor.backend,
            self.load_seconds,
            warmup_ms,
            f"; recorded choice: {why}" if why else "",
        )
        return self

    def predict(self, gray: np.ndarray, check: Check | None = None) -> tuple[Prediction, float]:
        if not self.ready:
            raise ModelUnavailable(self.problem or "model not loaded")
        assert self.predictor is not None
        prediction, ms = self.predictor.predict(gray, check)
        check_prediction(prediction, gray.shape)
        return prediction, ms
