"""The decision series in process (prometheus_client's default registry, single-process mode):
labels for every kind of answer, and monitoring never fails a request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mtdefect.serving import monitoring

prometheus_client = pytest.importorskip("prometheus_client")


def value(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def prediction(defective: bool, score: float, defect_class: str | None = None, **extra):
    return SimpleNamespace(defective=defective, score=score, defect_class=defect_class, **extra)


@pytest.mark.parametrize(
    "answer, labels",
    [
        (prediction(True, 0.9, "MT_Crack"), ("defective", "MT_Crack")),
        (prediction(True, 0.9, None), ("defective", "unclassified")),  # a model without a class head
        (prediction(False, 0.1, None), ("clean", "none")),
        (prediction(False, 0.1, "MT_Crack"), ("clean", "none")),  # a clean tile has no class
        (SimpleNamespace(defective=True, score=0.7), ("defective", "unclassified")),  # an older Prediction
    ],
)
def test_decision_labels(answer, labels):
    assert monitoring.decision_labels(answer) == labels


def test_record_prediction_counts_once_per_call():
    endpoint = "/unit-test"
    before = {
        "crack": value(
            "mtdefect_decisions_total", endpoint=endpoint, outcome="defective", defect_class="MT_Crack"
        ),
        "clean": value("mtdefect_decisions_total", endpoint=endpoint, outcome="clean", defect_class="none"),
        "scores": value("mtdefect_tile_score_count", endpoint=endpoint),
        "score_sum": value("mtdefect_tile_score_sum", endpoint=endpoint),
        "low": value("mtdefect_tile_score_bucket", endpoint=endpoint, le="0.25"),
        "pixels": value("mtdefect_image_pixels_sum", endpoint=endpoint),
        "small": value("mtdefect_image_pixels_bucket", endpoint=endpoint, le="16384.0"),
    }
    monitoring.record_prediction(endpoint, prediction(True, 0.8, "MT_Crack"), (100, 120))
    monitoring.record_prediction(endpoint, prediction(False, 0.2), (300, 400))
    monitoring.record_prediction(endpoint, prediction(False, 0.05), (64, 64))
    assert value(
        "mtdefect_decisions_total", endpoint=endpoint, outcome="defective", defect_class="MT_Crack"
    ) == (before["crack"] + 1)
    assert value("mtdefect_decisions_total", endpoint=endpoint, outcome="clean", defect_class="none") == (
        before["clean"] + 2
    )
    assert value("mtdefect_tile_score_count", endpoint=endpoint) == before["scores"] + 3
    assert value("mtdefect_tile_score_sum", endpoint=endpoint) == pytest.approx(before["score_sum"] + 1.05)
    assert value("mtdefect_tile_score_bucket", endpoint=endpoint, le="0.25") == before["low"] + 2
    assert value("mtdefect_image_pixels_sum", endpoint=endpoint) == before["pixels"] + 12000 + 120000 + 4096
    assert value("mtdefect_image_pixels_bucket", endpoint=endpoint, le="16384.0") == before["small"] + 2


def test_model_info_and_failures_never_raise(caplog):
    monitoring.set_model_info("magnetic-tile-segmenter:unit", "onnx")
    assert value("mtdefect_model_info", model="magnetic-tile-segmenter:unit", backend="onnx") == 1.0
    monitoring.set_model_info(None, "onnx")  # not loaded: nothing published, nothing raised
    monitoring.record_prediction("/unit-test", object(), (10, 10))  # not a prediction: logged, not raised
    assert "could not record" in caplog.text
    assert monitoring.series() is monitoring.series()  # created once per process
