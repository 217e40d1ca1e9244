"""What the line produces, as Prometheus series on BentoML's ``/metrics``.

    mtdefect_decisions_total{endpoint, outcome, defect_class}   counter
    mtdefect_tile_score{endpoint}                                 histogram (0-1)
    mtdefect_image_pixels{endpoint}                               histogram (width x height)
    mtdefect_model_info{model, backend}                           gauge, 1 while that model serves

``outcome`` is ``defective`` or ``clean``; ``defect_class`` is the predicted class (``MT_Crack``, ...),
``none`` for a clean tile, ``unclassified`` for a defective tile from a model without a class head.
Every prediction is counted, whichever endpoint answered it (the operator page asks /detect and
/overlay for each tile): alerts on the line's output should select ``endpoint="/detect"``.

The metrics are prometheus_client objects, as BentoML 1.4 documents for custom metrics (its
``bentoml.metrics`` module, now deprecated, re-exports the same classes). BentoML serves them in
Prometheus multiprocess mode; it gives each worker ``PROMETHEUS_MULTIPROC_DIR`` before starting it,
and the objects are created on first use, inside the worker, never at import time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("bentoml.serve.mtdefect")

PREFIX = "mtdefect"
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (0.975, 0.99, 1.0)
# square-ish images of 64², 128², 181², 256², 362², 512², 724², 1024², 2048², 4096² pixels
PIXEL_BUCKETS = (4096, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 4194304, 16777216)
CLEAN_CLASS = "none"
UNCLASSIFIED = "unclassified"


@dataclass(frozen=True)
class Series:
    decisions: Any
    score: Any
    pixels: Any
    model_info: Any


_series: Series | None = None
_lock = threading.Lock()


def series() -> Series:
    """The metric objects of this process, created on first use."""
    global _series
    if _series is None:
        with _lock:
            if _series is None:
                import prometheus_client as prom  # imported late: multiprocess mode is read at import

                _series = Series(
                    decisions=prom.Counter(
                        f"{PREFIX}_decisions",
                        "Tile decisions by endpoint, outcome and defect class",
                        ["endpoint", "outcome", "defect_class"],
                    ),
                    score=prom.Histogram(
                        f"{PREFIX}_tile_score",
                        "Image-level defect score of each predicted tile (0-1)",
                        ["endpoint"],
                        buckets=SCORE_BUCKETS,
                    ),
                    pixels=prom.Histogram(
                        f"{PREFIX}_image_pixels",
                        "Size of each predicted image in pixels (width x height)",
                        ["endpoint"],
                        buckets=PIXEL_BUCKETS,
                    ),
                    model_info=prom.Gauge(
                        f"{PREFIX}_model_info",
                        "1 for the model (store tag) and backend this service answers with",
                        ["model", "backend"],
                        multiprocess_mode="livemax",
                    ),
                )
    return _series


def decision_labels(prediction: Any) -> tuple[str, str]:
    """(outcome, defect_class) label values of one prediction."""
    defective = bool(prediction.defective)
    name = getattr(prediction, "defect_class", None)
    if not defective:
        return "clean", CLEAN_CLASS
    return "defective", str(name) if name else UNCLASSIFIED


def record_prediction(endpoint: str, prediction: Any, shape: tuple[int, ...]) -> None:
    """Count one successful prediction. Never raises: monitoring must not fail a request."""
    try:
        s = series()
        outcome, defect_class = decision_labels(prediction)
        s.decisions.labels(endpoint=endpoint, outcome=outcome, defect_class=defect_class).inc()
        s.score.labels(endpoint=endpoint).observe(float(prediction.score))
        s.pixels.labels(endpoint=endpoint).observe(int(shape[0]) * int(shape[1]))
    except Exception:  # noqa: BLE001
        logger.exception("could not record the prediction's metrics")


def set_model_info(tag: str | None, backend: str | None) -> None:
    """Publish the serving model (after a successful load). Never raises."""
    if not tag:
        return
    try:
        series().model_info.labels(model=tag, backend=str(backend or "unknown")).set(1)
    except Exception:  # noqa: BLE001
        logger.exception("could not publish the model-info metric")
