"""Over real HTTP: the API key, small byte and pixel caps, load shedding and timeouts (a server with
MT_API_KEY, MT_MAX_BYTES, MT_MAX_PIXELS, MT_MAX_CONCURRENCY, MT_TIMEOUT_S and MT_BACKEND=torch), and
a server whose model is missing (never ready, API answers 503)."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import socket
import time

import numpy as np
import pytest
from PIL import Image

from mtdefect import store
from mtdefect.inference import Predictor, decode_image

from .logcheck import assert_clean_log_since, log_offset
from .svc_support import API_KEY, STRICT, encode, raw_connect, read_response, tile

pytestmark = pytest.mark.slow

ROUTES = ("/segment", "/detect", "/overlay", "/detect_tile")
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BYTES = int(STRICT["MT_MAX_BYTES"])


def smooth(height: int, width: int) -> bytes:
    """A noise-free tile: compresses to a few KB, so only the pixel count matters."""
    gray = np.full((height, width), 110, np.uint8)
    gray[height // 3 : height // 2, width // 4 : width // 2] = 235
    return encode(gray)


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


# ------------------------------------------------------------------ API key


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": f"Bearer {API_KEY}x"},
    ],
    ids=["none", "wrong", "no-scheme", "basic", "longer"],
)
def test_api_calls_need_the_key(strict_server, route, headers):
    response = strict_server.post_image(route, smooth(64, 64), headers=headers)
    assert "API key" in error_of(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("route", ROUTES)
def test_the_right_key_gets_answers(strict_server, route):
    response = strict_server.post_image(route, smooth(96, 80), headers=AUTH)
    assert response.status_code == 200, response.text


def test_health_metrics_and_docs_stay_open(strict_server):
    for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert strict_server.get(path).status_code == 200, path


def test_the_key_is_checked_before_anything_else(strict_server):
    response = strict_server.post(
        "/detect", data=b"x", headers={"Content-Type": "application/vnd.bentoml+pickle"}
    )
    error_of(response, 401)


def test_without_a_key_configured_the_api_is_open(server):
    assert server.post_image("/detect", smooth(64, 64)).status_code == 200


# ------------------------------------------------------------------ caps


def test_pixel_cap_is_configurable(strict_server):
    assert strict_server.post_image("/segment", smooth(300, 300), headers=AUTH).status_code == 200
    assert "over the limit of 90000 pixels" in error_of(
        strict_server.post_image("/segment", smooth(301, 300), headers=AUTH), 413
    )


def test_byte_cap_is_configurable(strict_server):
    noisy = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    data = encode(noisy)  # 22500 px, under the pixel cap, but ~67 KB: over the byte cap
    assert MAX_BYTES < len(data) < MAX_BYTES + 64 * 1024  # passes the body check, refused by decode
    assert f"over the {MAX_BYTES}-byte limit" in error_of(
        strict_server.post_image("/detect", data, headers=AUTH), 413
    )


def test_oversized_body_is_refused_from_its_content_length(strict_server):
    data = os.urandom(MAX_BYTES * 3)
    error_of(strict_server.post_image("/detect", data, headers=AUTH), 413)


def test_oversized_chunked_body_is_cut_off(strict_server):
    def chunks():
        for _ in range(40):
            yield os.urandom(8192)

    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=abc"}
    response = strict_server.post("/detect", data=chunks(), headers=headers)  # no Content-Length
    error_of(response, 413)
    assert strict_server.get("/livez").status_code == 200


# ------------------------------------------------------------------ PyTorch backend


def test_torch_backend_answers_equal_the_in_process_prediction(strict_server, use_model_home):
    model_home = use_model_home
    data = encode(tile(210, 170, seed=31, blobs=3))
    expected = Predictor.from_dir(store.model_path(model_home.tag), backend="torch").predict(
        decode_image(data)
    )[0]
    response = strict_server.post_image("/segment", data, headers=AUTH)
    assert response.status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), expected.mask)
    assert "on torch-cpu" in strict_server.log()


# ------------------------------------------------------------------ load shedding


def stalled_upload(server) -> socket.socket:
    """An authorised request whose body never finishes: it holds one concurrency slot."""
    sock = raw_connect(server)
    sock.sendall(
        (
            "POST /detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY + "\r\n"
            "Content-Type: multipart/form-data; boundary=abc\r\nContent-Length: 5000\r\n\r\n--abc\r\n"
        ).encode()
    )
    return sock


def test_overload_is_shed_at_once_and_slow_requests_time_out(strict_server):
    """MT_MAX_CONCURRENCY=2: with two requests in flight a third gets 429 immediately;
    MT_TIMEOUT_S=3: the stalled two get 504 and free their slots."""
    stalled = [stalled_upload(strict_server) for _ in range(2)]
    try:
        deadline = time.monotonic() + 2.0  # the stalled two must reach the app (they time out after 3 s)
        while True:
            start = time.monotonic()
            response = strict_server.post_image("/detect", smooth(64, 64), headers=AUTH)
            elapsed = time.monotonic() - start
            if response.status_code == 429 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert error_of(response, 429) and elapsed < 1.5
        assert strict_server.get("/livez").status_code == 200  # health is never shed
        assert strict_server.get("/readyz").status_code == 200
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(read_response, stalled))
        for status, body in results:
            assert status == 504 and "error" in json.loads(body)
    finally:
        for sock in stalled:
            sock.close()
    assert strict_server.post_image("/detect", smooth(64, 64), headers=AUTH).status_code == 200


def test_strict_server_log_has_no_tracebacks(strict_server):
    """The strict server's refusals first (so the check means something when this test runs alone):
    on each API route an answer, no key, too many pixels, broken bytes. Then the log the server
    wrote since the test began: the access lines of those requests, and no traceback."""
    start = log_offset(strict_server)
    for route in ROUTES:
        assert strict_server.post_image(route, smooth(64, 64), headers=AUTH).status_code == 200
        error_of(strict_server.post_image(route, smooth(64, 64)), 401)
        error_of(strict_server.post_image(route, smooth(301, 300), headers=AUTH), 413)
        assert strict_server.post_image(route, b"not an image", headers=AUTH).status_code in (400, 415)
    assert_clean_log_since(strict_server, start, ROUTES)


# ------------------------------------------------------------------ missing model


def test_missing_model_server_is_alive_but_never_ready(broken_server):
    assert broken_server.get("/livez").status_code == 200
    assert broken_server.get("/metrics").status_code == 200
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert broken_server.get("/readyz").status_code == 503
        time.sleep(0.2)


@pytest.mark.parametrize("route", ROUTES)
def test_missing_model_server_answers_503_json(broken_server, route):
    message = error_of(broken_server.post_image(route, smooth(64, 64)), 503)
    assert "nope:latest" in message and "not ready" in message
    assert "/" not in message.split("nope:latest", 1)[1]  # no server paths leak to clients


def test_missing_model_is_logged_once_in_one_line(broken_server):
    log = broken_server.log()
    lines = [line for line in log.splitlines() if "NOT READY" in line]
    assert len(lines) == 1 and "nope:latest" in lines[0] and "[ERROR]" in lines[0]
    assert "Traceback" not in log
