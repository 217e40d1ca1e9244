"""Schemathesis against the running service's own OpenAPI document (/docs.json): every operation,
positive and negative generation, a bounded number of Hypothesis examples each. No answer may be a
5xx, and every answer must conform to the document (status code, content type, headers, JSON schema).

positive_data_acceptance is left out (docs/API.md, "Testing the API"): it counts any string
matching ``format: binary`` — random bytes, 1 x 1 pixel samples — as a valid upload, which the API
rightly refuses with 400/415. Every other check Schemathesis runs by default stays on.

The operations' Hypothesis strategies are used directly (``APIOperation.as_strategy`` + ``@given``)
rather than through ``schemathesis.pytest.from_fixture``: the lazy-fixture path of Schemathesis
4.32 reads ``request.node._nodeid``, which pytest 9 no longer has (AttributeError).
"""

from __future__ import annotations

import io
import os

import hypothesis.strategies as st
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from .logcheck import assert_clean_log_since, log_offset
from .svc_support import tile

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("MT_FUZZ_EXAMPLES", "30"))  # per operation
IMAGE_EXAMPLES = int(os.environ.get("MT_FUZZ_IMAGE_EXAMPLES", "15"))  # per API route, valid images
OPERATIONS = (
    "POST /segment",
    "POST /detect",
    "POST /overlay",
    "POST /detect_tile",
    "GET /livez",
    "GET /readyz",
    "GET /healthz",
    "GET /metrics",
)
STATUSES: dict[str, list[int]] = {}  # operation -> statuses seen, for the summary


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/docs.json")


def operations(schema) -> dict:
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


def test_every_operation_is_fuzzed(api_schema):
    assert sorted(operations(api_schema)) == sorted(OPERATIONS)


def strategy(operation):
    """Positive and negative cases; an operation without inputs has no negative cases."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    if operation.body or any(True for _ in operation.iter_parameters()):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzzed_requests_get_documented_answers(api_schema, server, label):
    operation = operations(api_schema)[label]
    seen = STATUSES.setdefault(label, [])
    start = log_offset(server)

    @given(case=strategy(operation))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        response = case.call_and_validate(
            base_url=server.url, excluded_checks=[positive_data_acceptance], timeout=30
        )
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

    fuzz()
    assert seen, "no fuzzed request was sent"
    assert server.get("/livez").status_code == 200
    assert_clean_log_since(server, start, [label.split()[1]])


@st.composite
def images(draw) -> tuple[bytes, tuple[int, int]]:
    """A valid upload: any accepted format, a common mode, sides 8..300 px; (bytes, (width, height))."""
    height, width = draw(st.integers(8, 300)), draw(st.integers(8, 300))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"]))
    modes = {
        "PNG": ["L", "RGB", "RGBA", "P", "I;16"],
        "JPEG": ["L", "RGB", "CMYK"],
        "BMP": ["L", "RGB", "P"],
        "TIFF": ["L", "RGB", "RGBA", "I;16"],
    }[fmt]
    mode = draw(st.sampled_from(modes))
    gray = tile(height, width, seed=draw(st.integers(0, 2**16)), blobs=draw(st.integers(0, 3)))
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(gray).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), (width, height)


@pytest.mark.parametrize("label", ["POST /segment", "POST /detect", "POST /overlay", "POST /detect_tile"])
def test_fuzzed_valid_images_get_conforming_answers(api_schema, server, label):
    """Schemathesis cases whose ``image`` is a real image: 200, the documented content type and JSON
    schema, and a mask / overlay of the input's size."""
    operation = operations(api_schema)[label]
    seen = STATUSES.setdefault(f"{label} (valid images)", [])
    start = log_offset(server)

    @given(case=operation.as_strategy(GenerationMode.POSITIVE), upload=images())
    @settings(
        max_examples=IMAGE_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case, upload):
        data, size = upload
        # /detect_tile: the same photograph twice, as two views of one tile
        case.body = {
            "image": [data, data] if label == "POST /detect_tile" else data
        }  # replaced after generation: the case's metadata no longer describes it,
        # so the checks that judge by it (positive / negative data) would judge the wrong body
        response = case.call_and_validate(
            base_url=server.url,
            timeout=30,
            excluded_checks=[positive_data_acceptance, negative_data_rejection],
        )
        seen.append(response.status_code)
        assert response.status_code == 200, (label, size, response.status_code, response.text[:300])
        if label == "POST /detect":
            assert 0 <= response.json()["defect_area_fraction"] <= 1
        elif label == "POST /detect_tile":
            views = response.json()["views"]
            assert [(v["width"], v["height"]) for v in views] == [size, size]
            assert views[0]["score"] == views[1]["score"] == response.json()["score"]
        else:
            picture = Image.open(io.BytesIO(response.content))
            if label == "POST /segment":
                assert picture.size == size
            else:  # the overlay may add a class legend strip below the image
                assert picture.width == size[0] and picture.height >= size[1]
            if label == "POST /segment":
                assert set(np.unique(np.asarray(picture)).tolist()) <= {0, 255}

    fuzz()
    assert len(seen) >= IMAGE_EXAMPLES // 2, f"only {len(seen)} of {IMAGE_EXAMPLES} valid images were sent"
    assert_clean_log_since(server, start, [label.split()[1]])


def test_server_survived_the_fuzzing(server):
    """After the fuzz tests above (each already checked its own answers and its part of the log):
    the server is still ready. Run alone, there is nothing to summarise: it skips rather than pass
    on nothing."""
    if not any(STATUSES.values()):
        pytest.skip("the summary of this module's fuzz tests: run it with them")
    assert server.get("/readyz").status_code == 200
    total = sum(len(v) for v in STATUSES.values())
    print(f"\nfuzzing: {total} requests over {len(STATUSES)} operations")
    for label, statuses in sorted(STATUSES.items()):
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"  {label}: {len(statuses)} requests, statuses {counts}")
    assert all(s < 500 for v in STATUSES.values() for s in v)
