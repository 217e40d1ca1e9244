"""The API over real HTTP, against `bentoml serve` with default settings and the tiny model."""

from __future__ import annotations

import concurrent.futures
import io
import json
import pickle
import time

import numpy as np
import pytest
from PIL import Image

from mtdefect import store
from mtdefect.inference import Predictor, decode_image
from mtdefect.serving.schema import DetectResult

from .logcheck import assert_clean_log_since, log_offset
from .svc_support import TILE_CLASSES, encode, raw_connect, read_response, rgb, tile

pytestmark = pytest.mark.slow

ROUTES = ("/segment", "/detect", "/overlay")
DETECT_KEYS = {
    "defective",
    "score",
    "score_source",
    "decision_threshold",
    "mask_gate_threshold",
    "mask_gate_window",
    "threshold",
    "defect_area_fraction",
    "regions",
    "defect_class",
    "class_scores",
    "model",
    "inference_ms",
}


def png_of(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def assert_refused(response, status: int | None = None, server=None) -> str:
    """A 4xx with a JSON object {"error": "..."}; and the server still answers afterwards."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    if server is not None:
        assert server.get("/livez").status_code == 200
    return body["error"]


# ------------------------------------------------------------------ health, metrics, schema


def test_health_and_metrics(server, model_home):
    assert f"ready: model {model_home.tag} on onnx" in server.log()  # loaded and warmed up
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200
    metrics = server.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_" in metrics.text


def test_openapi_document_describes_the_three_endpoints(server):
    from openapi_spec_validator import validate

    spec = server.get("/docs.json").json()
    validate(spec)
    for route in ROUTES:
        operation = spec["paths"][route]["post"]
        body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["image"] == {
            **body["properties"]["image"],
            "type": "string",
            "format": "binary",
        }
        assert body["required"] == ["image"]
        ok = operation["responses"]["200"]["content"]
        assert list(ok) == (["application/json"] if route == "/detect" else ["image/png"])
        for status in ("400", "401", "413", "415", "429", "503"):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}
    detect = spec["paths"]["/detect"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(detect["required"]) == DETECT_KEYS


# ------------------------------------------------------------------ answers


SIZES = [  # (height, width, mode, format)
    (222, 103, "L", "PNG"),
    (103, 222, "RGB", "JPEG"),
    (401, 631, "L", "TIFF"),
    (631, 401, "RGB", "PNG"),
    (222, 103, "RGB", "BMP"),
    (103, 222, "I;16", "PNG"),
    (103, 222, "RGBA", "PNG"),
    (103, 222, "P", "PNG"),
    (8, 8, "L", "PNG"),  # the smallest accepted
]


def image_bytes(height: int, width: int, mode: str, fmt: str, seed: int = 0) -> bytes:
    gray = tile(height, width, seed=seed)
    if mode == "L":
        return encode(gray, fmt)
    if mode == "RGB":
        return encode(rgb(gray), fmt)
    if mode == "RGBA":
        return encode(np.dstack([rgb(gray), np.full_like(gray, 255)]), fmt)
    if mode == "I;16":
        return encode(gray.astype(np.uint16) * 257, fmt)
    if mode == "P":
        buffer = io.BytesIO()
        Image.fromarray(rgb(gray)).convert("P").save(buffer, format=fmt)
        return buffer.getvalue()
    raise ValueError(mode)


@pytest.mark.parametrize("height, width, mode, fmt", SIZES, ids=[f"{w}x{h}-{m}-{f}" for h, w, m, f in SIZES])
def test_mask_and_overlay_have_the_input_size(server, height, width, mode, fmt):
    data = image_bytes(height, width, mode, fmt)
    mask = png_of(server.post_image("/segment", data))
    assert mask.size == (width, height) and mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    picture = png_of(server.post_image("/overlay", data))
    # the input's width; as tall as the input, plus a class legend strip below when regions have a class
    assert picture.width == width and picture.height >= height and picture.mode == "RGB"


def test_exif_orientation_is_applied_before_segmenting(server):
    gray = tile(103, 222, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed: shows as 103 wide, 222 high
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", exif=exif)
    mask = png_of(server.post_image("/segment", buffer.getvalue()))
    assert mask.size == (103, 222)


def in_process(data: bytes, tag: str):
    """What the evaluate stage computes for these bytes."""
    return Predictor.from_dir(store.model_path(tag)).predict(decode_image(data))[0]


@pytest.mark.parametrize("seed, height, width", [(11, 222, 103), (12, 401, 631), (13, 64, 64)])
def test_answers_equal_the_in_process_prediction(server, use_model_home, seed, height, width):
    model_home = use_model_home
    data = encode(rgb(tile(height, width, seed=seed, blobs=3)), "PNG")
    expected = in_process(data, model_home.tag)
    mask = np.asarray(png_of(server.post_image("/segment", data)))
    assert np.array_equal(mask, expected.mask)
    detect = server.post_image("/detect", data).json()
    assert detect["defective"] == expected.defective
    assert detect["score"] == pytest.approx(expected.score, abs=1e-6)
    assert detect["regions"] == [r.to_dict() for r in expected.regions]
    assert detect["defect_area_fraction"] == pytest.approx(expected.defect_area_fraction, abs=1e-7)
    assert detect["defect_class"] == expected.defect_class
    assert detect["class_scores"] == pytest.approx(expected.class_scores, abs=1e-6)


def test_detect_answer_follows_the_documented_schema(server, model_home):
    import jsonschema

    data = encode(tile(200, 300, seed=21, blobs=3))
    response = server.post_image("/detect", data)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == DETECT_KEYS
    DetectResult.model_validate(body)
    schema = DetectResult.model_json_schema()
    jsonschema.validate(body, schema)
    assert body["model"] == model_home.tag and response.headers["x-model"] == model_home.tag
    assert body["threshold"] == 0.5 and 0 <= body["score"] <= 1 and body["inference_ms"] > 0
    assert body["decision_threshold"] == 0.5 and body["defective"] == (body["score"] >= 0.5)
    assert isinstance(body["defective"], bool) and body["defective"] == bool(body["regions"])
    # the tiny model has a class head: a probability per class, a class only for a defective tile
    assert body["score_source"] == "mask" and set(body["class_scores"]) == set(TILE_CLASSES)
    assert sum(body["class_scores"].values()) == pytest.approx(1.0, abs=1e-5)
    defects = {k: v for k, v in body["class_scores"].items() if k != "MT_Free"}
    assert body["defect_class"] == (max(defects, key=defects.get) if body["defective"] else None)
    assert response.headers["x-defect-class"] == (body["defect_class"] or "")
    for region in body["regions"]:
        assert region["class"] == body["defect_class"]
        assert region["class_score"] == pytest.approx(body["class_scores"][body["defect_class"]], abs=1e-6)
        x, y, w, h = region["bbox"]
        assert 0 <= x < x + w <= 300 and 0 <= y < y + h <= 200 and 1 <= region["area"] <= w * h
        assert body["threshold"] <= region["score"] <= 1
    mask = np.asarray(png_of(server.post_image("/segment", data)))
    assert body["defect_area_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-7)


def test_overlay_keeps_the_image_outside_defects(server):
    gray = tile(120, 160, seed=5, blobs=3)
    data = encode(gray)
    mask = np.asarray(png_of(server.post_image("/segment", data)))
    detect = server.post_image("/detect", data).json()
    picture = np.asarray(png_of(server.post_image("/overlay", data)))
    assert picture.shape[1] == 160 and picture.shape[0] == (
        120 if not detect["defect_class"] else picture.shape[0]
    )
    image = picture[:120]  # below: the class legend strip, when the regions have a class
    outside = mask == 0
    for region in detect["regions"]:  # each region's class-coloured frame, 2 px around its box
        x, y, w, h = region["bbox"]
        outside[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2] = False
    assert np.array_equal(image[outside], np.repeat(gray[..., None], 3, axis=2)[outside])
    if (mask > 0).any():
        assert detect["defect_class"] and picture.shape[0] > 120  # the tiny model's head names a class
        assert not np.array_equal(image[mask > 0], np.repeat(gray[..., None], 3, axis=2)[mask > 0])


def test_concurrent_requests_all_succeed(server):
    data = encode(tile(150, 150, seed=6))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: server.post_image(ROUTES[i % 3], data).status_code, range(12)))
    assert statuses == [200] * 12


# ------------------------------------------------------------------ bad input: always a 4xx, never a 500


def multipart(
    *parts: tuple[str, bytes], boundary: str = "b0undary", close: bool = True
) -> tuple[bytes, dict]:
    out = b""
    for name, data in parts:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f"\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def frames(fmt: str) -> bytes:
    images = [Image.fromarray(tile(64, 64, seed=s)) for s in range(3)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:])
    return buffer.getvalue()


def big_but_small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 100).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


GOOD = encode(tile(64, 64, seed=1))
JPEG = encode(rgb(tile(128, 128, seed=2)), "JPEG")


def bad_requests() -> dict[str, tuple[dict, int]]:
    """name → (requests.post keyword arguments, expected status)."""
    cases: dict[str, tuple[dict, int]] = {
        "not-an-image": ({"files": {"image": ("notes.txt", b"hello, this is text" * 20)}}, 415),
        "pdf": ({"files": {"image": ("a.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF")}}, 415),
        "truncated-jpeg": ({"files": {"image": ("t.jpg", JPEG[: len(JPEG) // 2])}}, 400),
        "truncated-png": ({"files": {"image": ("t.png", GOOD[: len(GOOD) - 40])}}, 400),
        "empty-file": ({"files": {"image": ("e.png", b"")}}, 400),
        "one-pixel": ({"files": {"image": ("1.png", encode(np.zeros((1, 1), np.uint8)))}}, 400),
        "too-thin": ({"files": {"image": ("7.png", encode(np.zeros((7, 100), np.uint8)))}}, 400),
        "over-pixel-cap": ({"files": {"image": ("big.png", big_but_small_png())}}, 413),
        "multi-frame-gif": ({"files": {"image": ("a.gif", frames("GIF"))}}, 415),
        "multi-frame-tiff": ({"files": {"image": ("a.tif", frames("TIFF"))}}, 400),
        "webp": ({"files": {"image": ("a.webp", encode(tile(64, 64), "WEBP"))}}, 415),
        "misnamed-field": ({"files": {"file": ("t.png", GOOD)}}, 400),
        "extra-field": ({"files": {"image": ("t.png", GOOD), "note": ("n.txt", b"x")}}, 400),
        "extra-plain-field": ({"files": {"image": ("t.png", GOOD)}, "data": {"threshold": "0.1"}}, 400),
        "two-images": ({"files": [("image", ("a.png", GOOD)), ("image", ("b.png", GOOD))]}, 400),
        "pickle-body": (
            {
                "data": pickle.dumps({"image": GOOD}),
                "headers": {"Content-Type": "application/vnd.bentoml+pickle"},
            },
            415,
        ),
        "text-body": ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
        "raw-png-body": ({"data": GOOD, "headers": {"Content-Type": "image/png"}}, 415),
        "json-url": ({"json": {"image": "http://169.254.169.254/latest/meta-data/"}}, 415),
        "urlencoded": ({"data": {"image": "abc"}}, 415),
        "no-content-type": ({"data": GOOD, "headers": {"Content-Type": ""}}, 415),
        "over-byte-cap": ({"files": {"image": ("huge.png", b"\x89PNG" + b"\0" * (21 * 1024 * 1024))}}, 413),
    }
    body, headers = multipart()
    cases["empty-multipart"] = ({"data": body, "headers": headers}, 400)
    cases["empty-body"] = ({"data": b"", "headers": headers}, 400)
    body, headers = multipart(("image", GOOD), close=False)
    cases["unterminated-multipart"] = ({"data": body, "headers": headers}, 400)
    body, _ = multipart(("image", GOOD))
    cases["no-boundary"] = ({"data": body, "headers": {"Content-Type": "multipart/form-data"}}, 400)
    cases["wrong-boundary"] = (
        {"data": body, "headers": {"Content-Type": "multipart/form-data; boundary=zz"}},
        400,
    )
    return cases


BAD = bad_requests()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_a_json_4xx(server, route, case):
    kwargs, status = BAD[case]
    assert_refused(server.post(route, **kwargs), status, server)


def test_wrong_method_is_refused(server):
    for route in ROUTES:
        assert_refused(server.get(route), 405)


def test_declared_oversize_body_is_refused_before_it_is_sent(server):
    """Only the headers go out; a server that waited for the 25 MB body would never answer."""
    head = (
        "POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=abc\r\n"
        f"Content-Length: {25 * 1024 * 1024}\r\n\r\n"
    )
    start = time.monotonic()
    with raw_connect(server, timeout=5) as sock:
        sock.sendall(head.encode())
        status, body = read_response(sock)
    assert status == 413 and "error" in json.loads(body) and time.monotonic() - start < 3
    assert server.get("/livez").status_code == 200


def test_server_log_has_no_tracebacks(server):
    """The error paths first, so the check means something when this test runs alone: on each API
    route a valid tile, broken image bytes, an empty file and a GET; an unknown route. Then the log
    the server wrote since the test began: the access lines of those requests, and no traceback."""
    start = log_offset(server)
    for route in ROUTES:
        assert server.post_image(route, encode(tile(48, 40, seed=3))).status_code == 200
        assert_refused(server.post_image(route, b"\x89PNG\r\n\x1a\n not really a png"))
        assert_refused(server.post(route, files={"image": ("e.png", b"")}), 400)
        assert server.get(route).status_code == 405
    assert server.get("/no-such-route").status_code == 404
    assert_clean_log_since(server, start, [*ROUTES, "/no-such-route"])
