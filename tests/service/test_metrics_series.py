"""The decision series on BentoML's /metrics (mtdefect.serving.monitoring), scraped from a real
`bentoml serve` before and after a few requests: each successful prediction adds exactly one
decision with the right labels, one score and one image size; refusals add nothing."""

from __future__ import annotations

import re
import shutil
from collections import Counter

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtdefect.serving.monitoring import PIXEL_BUCKETS, SCORE_BUCKETS

from .svc_support import ModelHome, encode, running_server, tile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def metrics_server(model_home, tmp_path_factory):
    """A server with its own BENTOML_HOME (a copy of the test model store). BentoML keeps the
    Prometheus multiprocess files in $BENTOML_HOME/prometheus_multiproc_dir and empties that folder
    whenever a server starts, so the session's other servers (same home) would wipe these counts."""
    home = tmp_path_factory.mktemp("metrics-home")
    shutil.copytree(model_home.home / "models", home / "models")
    own = ModelHome(home=home, tag=model_home.tag, model_dir=model_home.model_dir)
    with running_server(own, tmp_path_factory.mktemp("logs") / "metrics.log") as server:
        yield server


def scrape(server) -> dict[tuple[str, frozenset], float]:
    response = server.get("/metrics")
    assert response.status_code == 200
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("mtdefect_"):
                labels = {
                    k: str(float(v)) if k == "le" else v for k, v in sample.labels.items()
                }  # 1.048576e+06
                key = (sample.name, frozenset(labels.items()))
                samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_model_info_names_the_serving_model(metrics_server, model_home):
    server = metrics_server
    backend = re.search(rf"ready: model {re.escape(model_home.tag)} on (\S+)", server.log()).group(1)
    samples = scrape(server)
    info = {
        (dict(labels)["model"], dict(labels)["backend"]): value
        for (name, labels), value in samples.items()
        if name == "mtdefect_model_info"
    }
    assert info == {(model_home.tag, backend): 1.0}


def test_each_prediction_is_counted_once_with_its_labels(metrics_server):
    server = metrics_server
    images = [
        tile(120, 160, seed=21, blobs=3),  # bright blobs: the tiny model's defects
        tile(90, 90, seed=22, blobs=0),  # plain: clean
        tile(300, 260, seed=23, blobs=2),
        np.full((64, 80), 110, dtype=np.uint8),
    ]
    before = scrape(server)
    answers = []
    for image in images:
        response = server.post_image("/detect", encode(image))
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert server.post_image("/overlay", encode(images[0])).status_code == 200
    assert server.post_image("/detect", b"not an image at all").status_code in (
        400,
        415,
    )  # refused: not counted
    assert server.get("/detect").status_code == 405
    after = scrape(server)

    expected = Counter(
        ("defective", a.get("defect_class") or "unclassified") if a["defective"] else ("clean", "none")
        for a in answers
    )
    # (which outcomes occur depends on the test model; tests/unit/test_monitoring.py covers every label)
    for (outcome, defect_class), count in expected.items():
        assert (
            delta(
                before,
                after,
                "mtdefect_decisions_total",
                endpoint="/detect",
                outcome=outcome,
                defect_class=defect_class,
            )
            == count
        )
    detect_total = sum(
        delta(before, after, name, **dict(labels))
        for name, labels in after
        if name == "mtdefect_decisions_total" and dict(labels)["endpoint"] == "/detect"
    )
    assert detect_total == len(images)
    first = answers[0]
    overlay_labels = {
        "endpoint": "/overlay",
        "outcome": "defective" if first["defective"] else "clean",
        "defect_class": (first.get("defect_class") or "unclassified") if first["defective"] else "none",
    }
    assert delta(before, after, "mtdefect_decisions_total", **overlay_labels) == 1

    scores = [a["score"] for a in answers]
    pixels = [im.shape[0] * im.shape[1] for im in images]
    assert delta(before, after, "mtdefect_tile_score_count", endpoint="/detect") == len(images)
    assert delta(before, after, "mtdefect_tile_score_sum", endpoint="/detect") == pytest.approx(
        sum(scores), abs=1e-5
    )
    for bound in SCORE_BUCKETS:
        if all(abs(s - bound) > 1e-5 for s in scores):  # /detect rounds scores to 6 decimals
            assert delta(
                before, after, "mtdefect_tile_score_bucket", endpoint="/detect", le=str(float(bound))
            ) == sum(s <= bound for s in scores), bound
    assert delta(
        before, after, "mtdefect_tile_score_bucket", endpoint="/detect", le=str(float("inf"))
    ) == len(images)

    assert delta(before, after, "mtdefect_image_pixels_count", endpoint="/detect") == len(images)
    assert delta(before, after, "mtdefect_image_pixels_sum", endpoint="/detect") == sum(pixels)
    for bound in PIXEL_BUCKETS:
        assert delta(
            before, after, "mtdefect_image_pixels_bucket", endpoint="/detect", le=str(float(bound))
        ) == sum(p <= bound for p in pixels), bound
    assert delta(before, after, "mtdefect_image_pixels_count", endpoint="/overlay") == 1
