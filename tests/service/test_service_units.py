"""Fast, in-process tests of the serving helpers: multipart parsing, request guards, settings,
the OpenAPI additions, and that service.py pulls in no training code."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from mtdefect.serving.config import ConfigError, ServeConfig
from mtdefect.serving.errors import ApiError
from mtdefect.serving.guard import ApiGuard
from mtdefect.serving.schema import ERROR_RESPONSES, with_error_responses
from mtdefect.serving.upload import check_content_length, check_content_type, image_from_form, read_body

from .svc_support import REPO

BOUNDARY = "xYzBoundary42"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def form(
    *parts: tuple[str, bytes], boundary: str = BOUNDARY, close: bool = True, filename: str = "a.png"
) -> bytes:
    out = b""
    for name, data in parts:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


def status_of(body: bytes, content_type: str | None = CT) -> int:
    with pytest.raises(ApiError) as info:
        image_from_form(body, content_type)
    assert info.value.message
    return info.value.status


def test_the_image_part_is_returned_byte_for_byte():
    payload = bytes(range(256)) * 10 + b"\r\n--not-the-boundary\r\n"
    assert image_from_form(form(("image", payload)), CT) == payload


def test_a_plain_field_without_filename_is_accepted():
    body = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"\r\n\r\n'.encode() + b"abc\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    assert image_from_form(body, CT) == b"abc"


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b"", CT, 400),  # empty body
        (form(("file", b"x")), CT, 400),  # misnamed field
        (form(("image", b"x"), ("extra", b"y")), CT, 400),  # extra field
        (form(("image", b"x"), ("image", b"y")), CT, 400),  # two images
        (form(("image", b"x"), close=False), CT, 400),  # truncated multipart (no closing boundary)
        (form(("image", b"x")), "multipart/form-data", 400),  # no boundary
        (form(("image", b"x"), boundary="other"), CT, 400),  # boundary mismatch
        (b"just some text", CT, 400),
        (form(("image", b"x")), "text/plain", 415),
        (form(("image", b"x")), "application/json", 415),
        (form(("image", b"x")), "application/x-www-form-urlencoded", 415),
        (form(("image", b"x")), "application/vnd.bentoml+pickle", 415),
        (form(("image", b"x")), None, 415),
        (form(*[("image", b"x")] * 20), CT, 400),  # too many parts
    ],
)
def test_bad_forms_are_refused_with_a_4xx(body, content_type, status):
    assert status_of(body, content_type) == status


def test_part_without_disposition_is_refused():
    body = f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode()
    assert status_of(body) == 400


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda a, b: form(("image", a))[: len(b) % 200 + 1] + b,
            st.binary(max_size=50),
            st.binary(max_size=50),
        ),
        st.builds(lambda n, d: form((n, d)), st.text(max_size=10), st.binary(max_size=50)),
    ),
    content_type=st.one_of(st.just(CT), st.text(max_size=60), st.just("multipart/form-data; boundary=")),
)
def test_parsing_never_fails_with_anything_but_an_api_error(body, content_type):
    try:
        image_from_form(body, content_type)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message


def test_read_body_stops_at_the_cap():
    async def chunks():
        for _ in range(100):
            yield b"x" * 1000

    assert asyncio.run(read_body(chunks(), 100_000)) == b"x" * 100_000
    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(chunks(), 99_999))
    assert info.value.status == 413


def test_read_body_turns_a_disconnect_into_a_4xx():
    from starlette.requests import ClientDisconnect

    async def chunks():
        yield b"x"
        raise ClientDisconnect()

    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(chunks(), 100))
    assert info.value.status == 400


@pytest.mark.parametrize("value, status", [("abc", 400), ("-1", 400), ("1001", 413)])
def test_content_length_checks(value, status):
    check_content_length(None, 1000)
    check_content_length("1000", 1000)
    with pytest.raises(ApiError) as info:
        check_content_length(value, 1000)
    assert info.value.status == status


def test_content_type_accepts_multipart_with_parameters():
    check_content_type("Multipart/Form-Data; boundary=abc; charset=utf-8")


def test_guard_order_and_statuses():
    guard = ApiGuard(app=None, paths=["/detect"], max_body_bytes=100, api_key="k")

    def status(method="POST", **headers):
        try:
            guard.check(method, Headers(headers))
        except ApiError as exc:
            return exc.status
        return 200

    auth = {"authorization": "Bearer k"}
    assert status() == 401
    assert status(authorization="Bearer wrong") == 401
    assert status(authorization="Basic k") == 401
    assert status("GET", **auth) == 405
    assert status(**auth, **{"content-type": "application/vnd.bentoml+pickle"}) == 415
    assert status(**auth, **{"content-type": CT, "content-length": "101"}) == 413
    assert status(**auth, **{"content-type": CT, "content-length": "100"}) == 200


def test_config_from_env():
    config = ServeConfig.from_env({})
    assert config.model_tag == "magnetic-tile-segmenter:latest"
    assert (config.max_bytes, config.max_pixels) == (20 * 1024 * 1024, 4096 * 4096)
    assert config.api_key is None and config.backend == "auto"
    config = ServeConfig.from_env(
        {
            "MT_MODEL_TAG": "m:v1",
            "MT_BACKEND": "ONNX",
            "MT_MAX_BYTES": "1_000",
            "MT_MAX_PIXELS": "64",
            "MT_API_KEY": "k",
            "MT_TIMEOUT_S": "2.5",
            "MT_MAX_CONCURRENCY": "3",
            "MT_WORKERS": "2",
            "MT_THREADS": "1",
        }
    )
    assert (config.model_tag, config.backend, config.max_bytes, config.max_pixels) == (
        "m:v1",
        "onnx",
        1000,
        64,
    )
    assert (config.api_key, config.timeout_s, config.max_concurrency, config.workers, config.threads) == (
        "k",
        2.5,
        3,
        2,
        1,
    )
    assert config.max_body_bytes > config.max_bytes


@pytest.mark.parametrize(
    "env",
    [{"MT_BACKEND": "tensorrt"}, {"MT_MAX_BYTES": "lots"}, {"MT_MAX_PIXELS": "0"}, {"MT_TIMEOUT_S": "-1"}],
)
def test_bad_config_is_refused(env):
    with pytest.raises(ConfigError):
        ServeConfig.from_env(env)


def test_openapi_additions_document_every_error_status():
    spec = {
        "paths": {
            "/detect": {"post": {"responses": {200: {"description": "ok"}, 404: {}}}},
            "/livez": {"get": {}},
        },
        "components": {"schemas": {}},
    }
    out = with_error_responses(spec)
    responses = out["paths"]["/detect"]["post"]["responses"]
    assert set(responses) == {"200"} | {str(s) for s in ERROR_RESPONSES}
    assert out["components"]["schemas"]["Error"]["required"] == ["error"]
    assert out["paths"]["/livez"] == {"get": {}}
    assert spec["paths"]["/detect"]["post"]["responses"].keys() == {200, 404}  # input untouched


def test_service_module_imports_no_training_or_data_code(tmp_path):
    code = (
        "import json, sys; import service; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'dvc', 'dvclive', 'torch', 'onnxruntime') "
        "or m.startswith(('mtdefect.data', 'mtdefect.train', 'mtdefect.stages', 'mtdefect.model.module', "
        "'mtdefect.evaluate', 'mtdefect.calibrate')))))"
    )
    out = subprocess.run(
        check=False,
        args=[sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MT_")},
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(tmp_path),
        },
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
