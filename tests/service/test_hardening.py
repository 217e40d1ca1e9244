"""Hardening of the HTTP service (issue 6, service half), against real `bentoml serve` processes.

- The bad-input corpus: every hostile or unusual upload gets either a correct answer (a mask the
  size of the image as displayed, values {0, 255}) or the documented 4xx with JSON {"error": ...};
  never a 5xx, and the server answers normally afterwards. The run writes case -> status -> error
  to ``bad_input_corpus.json`` in the pytest tmp dir and prints the table (``pytest -s``);
  docs/RELIABILITY_SERVICE.md carries that table.
- SIGTERM with requests in flight: they complete with 200, then every server process exits.
- Security: the listening socket is bound to the --host given only; no model-management endpoint
  exists; BentoML is at least 1.4.19.

Fuzzing is in test_fuzz_openapi.py, load and overload in test_load_service.py.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from .svc_support import BENTOML, Server, encode, rgb, start_server, stop_server, tile, wait_until

pytestmark = pytest.mark.slow

ROUTES = ("/segment", "/detect", "/overlay", "/detect_tile")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DOCUMENTED_PATHS = {
    "/segment",
    "/detect",
    "/overlay",
    "/detect_tile",
    "/livez",
    "/readyz",
    "/healthz",
    "/metrics",
}


# ====================================================================== the bad-input corpus


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


@lru_cache(maxsize=1)
def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 8-bit grayscale PNG of width x height black pixels: 400 Mpx (400 MB decoded), ~0.4 MB
    on disk. Written by hand so that no 400 MB array is ever built here."""
    packer = zlib.compressobj(9)
    rows = (b"\0" * (width + 1)) * 200  # filter byte + pixels, 200 rows at a time
    idat = b"".join(packer.compress(rows) for _ in range(height // 200)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_with_garbage_pixels(width: int = 64, height: int = 64) -> bytes:
    """Valid signature and IHDR, then an IDAT chunk (correct CRC) holding random bytes, not zlib data."""
    garbage = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", garbage)
        + _png_chunk(b"IEND", b"")
    )


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def frames(fmt: str, n: int = 3) -> bytes:
    images = [Image.fromarray(tile(64, 64, seed=s)) for s in range(n)]
    return save(
        images[0],
        fmt,
        save_all=True,
        append_images=images[1:],
        **({"duration": 100, "loop": 0} if fmt == "GIF" else {}),
    )


def exif_rotated_jpeg(height: int, width: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(Image.fromarray(rgb(tile(height, width, seed=4))), "JPEG", exif=exif)


class Marker:
    """Unpickling this object creates the file ``path`` (builtins.open, harmless but observable)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass
class Case:
    name: str
    what: str  # one line for the README table
    request: dict  # keyword arguments of requests.post
    status: int | tuple[int, ...]  # the expected status (or the statuses accepted)
    size: tuple[int, int] | None = None  # (width, height) of the expected mask when status == 200
    note: str = ""


def files(data: bytes, filename: str = "upload.bin") -> dict:
    return {"files": {"image": (filename, data, "application/octet-stream")}}


def corpus(tmp: Path) -> list[Case]:
    good = encode(tile(64, 64, seed=1))
    jpeg = encode(rgb(tile(128, 128, seed=2)), "JPEG")
    gray = tile(90, 120, seed=3)
    palette = Image.fromarray(rgb(gray)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    cmyk = Image.fromarray(rgb(gray)).convert("CMYK")
    rgba = np.dstack([rgb(gray), np.linspace(0, 255, gray.size).reshape(gray.shape).astype(np.uint8)])
    html = (
        b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=x onerror=alert(1)></body></html>"
    )
    svg = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        b'<rect width="64" height="64" fill="gray"/><circle cx="32" cy="32" r="8" fill="white"/></svg>'
    )
    marker = tmp / "unpickled-by-the-server"
    evil = pickle.dumps({"image": Marker(str(marker))})
    multipart = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    return [
        Case(
            "control-png",
            "an ordinary 120x90 grayscale PNG (control)",
            files(encode(gray), "t.png"),
            200,
            (120, 90),
        ),
        Case("zero-byte-file", "`image` part of 0 bytes", files(b"", "e.png"), 400),
        Case(
            "zero-byte-body", "multipart Content-Type, empty body", {"data": b"", "headers": multipart}, 400
        ),
        Case("random-bytes", "4 KiB of random bytes", files(random_bytes(4096, 1)), 415),
        Case("text", "plain text", files(b"this is not an image\n" * 50, "a.txt"), 415),
        Case("html", "an HTML page", files(html, "a.html"), 415),
        Case("svg", "an SVG image (vector, not accepted)", files(svg, "a.svg"), 415),
        Case("truncated-jpeg", "JPEG cut in half", files(jpeg[: len(jpeg) // 2], "t.jpg"), 400),
        Case("truncated-png", "PNG without its last 40 bytes", files(good[:-40], "t.png"), 400),
        Case(
            "png-header-then-garbage",
            "PNG signature + IHDR, then random bytes",
            files(good[:33] + random_bytes(2000, 2), "g.png"),
            415,
        ),
        Case(
            "png-valid-chunks-garbage-pixels",
            "well-formed PNG chunks whose IDAT is random bytes",
            files(png_with_garbage_pixels(), "g.png"),
            400,
        ),
        Case(
            "jpeg-header-then-garbage",
            "JPEG SOI + APP0 header, then random bytes",
            files(jpeg[:20] + random_bytes(2000, 3), "g.jpg"),
            415,
        ),
        Case("1x1", "1 x 1 px PNG", files(encode(np.zeros((1, 1), np.uint8)), "1.png"), 400),
        Case(
            "1x10000",
            "1 px wide, 10000 px high PNG",
            files(encode(np.zeros((10000, 1), np.uint8)), "s.png"),
            413,
        ),
        Case(
            "10000x1",
            "10000 px wide, 1 px high PNG",
            files(encode(np.zeros((1, 10000), np.uint8)), "s.png"),
            413,
        ),
        Case(
            "decompression-bomb",
            "20000 x 20000 PNG, ~0.4 MB on disk (400 Mpx)",
            files(png_bomb(), "bomb.png"),
            413,
            note="refused from the header by Pillow's decompression-bomb guard, reported as 413",
        ),
        Case(
            "png-16-bit",
            "16-bit grayscale PNG",
            files(encode(gray.astype(np.uint16) * 257), "16.png"),
            200,
            (120, 90),
        ),
        Case("png-rgba", "RGBA PNG with a gradient alpha", files(encode(rgba), "a.png"), 200, (120, 90)),
        Case(
            "png-palette",
            "palette (P mode) PNG, 64 colours",
            files(save(palette, "PNG"), "p.png"),
            200,
            (120, 90),
        ),
        Case("jpeg-cmyk", "CMYK JPEG", files(save(cmyk, "JPEG"), "c.jpg"), 200, (120, 90)),
        Case("gif-animated", "animated GIF, 3 frames", files(frames("GIF"), "a.gif"), 415),
        Case("tiff-multipage", "multi-page TIFF, 3 pages", files(frames("TIFF"), "a.tif"), 400),
        Case(
            "jpeg-exif-rotate-90",
            "JPEG 222x103 stored, EXIF orientation 6 (displayed 103x222)",
            files(exif_rotated_jpeg(103, 222, 6), "r.jpg"),
            200,
            (103, 222),
        ),
        Case(
            "jpeg-exif-transverse",
            "JPEG 222x103 stored, EXIF orientation 7 (displayed 103x222)",
            files(exif_rotated_jpeg(103, 222, 7), "r.jpg"),
            200,
            (103, 222),
        ),
        Case(
            "over-byte-cap",
            "21 MiB file (cap 20 MiB + 64 KiB envelope)",
            files(b"\x89PNG" + b"\0" * (21 * 1024 * 1024), "huge.png"),
            413,
        ),
        Case(
            "missing-field",
            "multipart with a `file` field instead of `image`",
            {"files": {"file": ("t.png", good)}},
            400,
        ),
        Case(
            "extra-fields",
            "`image` plus a `threshold` field",
            {"files": {"image": ("t.png", good)}, "data": {"threshold": "0.1"}},
            400,
        ),
        Case(
            "wrong-content-type",
            "the PNG as the raw body, Content-Type application/json",
            {"data": good, "headers": {"Content-Type": "application/json"}},
            415,
        ),
        Case(
            "pickle-body",
            "application/vnd.bentoml+pickle body whose unpickling would create a file",
            {"data": evil, "headers": {"Content-Type": "application/vnd.bentoml+pickle"}},
            415,
        ),
        Case("pickle-as-image", "the same pickle sent as the `image` file", files(evil, "x.pkl"), 415),
    ]


def answer_of(response: requests.Response, case: Case, route: str) -> str:
    """Checks one response against the case; returns what goes into the table's answer column."""
    status = response.status_code
    assert status < 500, f"{case.name} {route}: {status} {response.text[:300]}"
    if case.status != 200:
        assert response.headers["content-type"].startswith("application/json"), (
            case.name,
            route,
            response.headers,
        )
        body = response.json()
        assert (
            isinstance(body, dict)
            and set(body) == {"error"}
            and isinstance(body["error"], str)
            and body["error"]
        )
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        assert status in expected, f"{case.name} {route}: {status} {body['error']}"
        return body["error"]
    assert status == 200, f"{case.name} {route}: {status} {response.text[:300]}"
    width, height = case.size
    if route == "/detect":
        body = response.json()
        assert 0 <= body["defect_area_fraction"] <= 1 and 0 <= body["score"] <= 1
        for region in body["regions"]:
            x, y, w, h = region["bbox"]
            assert 0 <= x < x + w <= width and 0 <= y < y + h <= height
        return f"detect: defective={str(body['defective']).lower()}, {len(body['regions'])} region(s)"
    if route == "/detect_tile":  # one view: the tile answer is that view's
        body = response.json()
        (view,) = body["views"]
        assert (view["width"], view["height"]) == (width, height) and body["score"] == view["score"]
        return f"tile: defective={str(body['defective']).lower()}, 1 view"
    picture = Image.open(io.BytesIO(response.content))
    if route == "/overlay":  # the input's width; a class legend strip may follow the image's rows
        assert picture.format == "PNG" and picture.width == width and picture.height >= height, picture.size
        assert picture.mode == "RGB"
        return f"RGB overlay {width}x{height}"
    assert picture.format == "PNG" and picture.size == (width, height), (case.name, route, picture.size)
    values = set(np.unique(np.asarray(picture)).tolist())
    assert picture.mode == "L" and values <= {0, 255}, (case.name, picture.mode, values)
    return f"mask {width}x{height}, values {sorted(values)}"


def test_bad_input_corpus(server, tmp_path_factory):
    """Every case on every route; the three routes must agree on the status. Afterwards the server
    answers a known image exactly as before, did not unpickle anything and logged no traceback."""
    tmp = tmp_path_factory.mktemp("hardening")
    cases = corpus(tmp)
    probe = encode(tile(100, 140, seed=9, blobs=3))
    before = server.post_image("/detect", probe).json()
    results, failures = [], []
    for case in cases:
        row = {
            "case": case.name,
            "input": case.what,
            "expected": case.status,
            "note": case.note,
            "routes": {},
        }
        for route in ROUTES:
            start = time.perf_counter()
            try:
                response = server.post(route, **case.request)
                row["routes"][route] = {
                    "status": response.status_code,
                    "ms": round(1000 * (time.perf_counter() - start), 1),
                }
                row["routes"][route]["answer"] = answer_of(response, case, route)
            except (AssertionError, requests.RequestException, ValueError) as exc:
                failures.append(f"{case.name} {route}: {type(exc).__name__}: {exc}")
                row["routes"].setdefault(route, {})["failure"] = str(exc)[:300]
            live = server.get("/livez", timeout=10).status_code
            if live != 200:
                failures.append(f"{case.name} {route}: /livez answered {live} afterwards")
        statuses = {r.get("status") for r in row["routes"].values()}
        if len(statuses) != 1:
            failures.append(f"{case.name}: the routes disagree: {row['routes']}")
        results.append(row)

    report = tmp / "bad_input_corpus.json"
    report.write_text(json.dumps(results, indent=2))
    print(f"\nbad-input corpus: {len(cases)} cases x {len(ROUTES)} routes -> {report}")
    print("| case | answer (/segment) | status |\n|---|---|---|")
    for row in results:
        segment = row["routes"]["/segment"]
        print(
            f"| {row['case']} | {segment.get('answer', segment.get('failure'))} | {segment.get('status')} |"
        )

    assert not failures, "\n".join(failures)
    assert not (tmp / "unpickled-by-the-server").exists(), "the server unpickled a request body"
    after = server.post_image("/detect", probe)
    assert after.status_code == 200
    assert {k: v for k, v in after.json().items() if k != "inference_ms"} == {
        k: v for k, v in before.items() if k != "inference_ms"
    }
    assert server.get("/readyz").status_code == 200
    assert "Traceback" not in server.log()


def test_decompression_bomb_is_refused_from_the_header(server):
    """The 400 Mpx PNG is refused without decoding it: quickly, and the server's memory stays put."""
    bomb = png_bomb()
    serving = [
        p for p in [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(True)]
    ]
    rss_before = sum(p.memory_info().rss for p in serving if p.is_running())
    start = time.perf_counter()
    response = server.post_image("/segment", bomb, "bomb.png")
    elapsed = time.perf_counter() - start
    rss_after = sum(p.memory_info().rss for p in serving if p.is_running())
    assert response.status_code == 413 and "too many pixels" in response.json()["error"]
    assert elapsed < 2.0, elapsed
    assert rss_after - rss_before < 100 * 1024 * 1024, (rss_before, rss_after)


# ====================================================================== SIGTERM with requests in flight


def in_progress(server: Server, endpoint: str) -> float:
    """BentoML's bentoml_service_request_in_progress gauge for one endpoint (summed over workers)."""
    text = server.get("/metrics", timeout=5).text
    pattern = re.compile(
        r'^bentoml_service_request_in_progress\{[^}]*endpoint="'
        + re.escape(endpoint)
        + r'"[^}]*\}\s+([0-9.e+-]+)$',
        re.MULTILINE,
    )
    return sum(float(v) for v in pattern.findall(text))


def test_sigterm_lets_in_flight_requests_finish_then_exits(model_home, tmp_path_factory):
    """A dedicated server (it dies): 6 large images in flight (one forward pass at a time, so most
    wait in the queue), SIGTERM to the `bentoml serve` process, as a container runtime sends it.
    All 6 answer 200 with a full mask, then the server exits with status 0 and all its worker
    processes are gone."""
    log = tmp_path_factory.mktemp("logs") / "sigterm.log"
    srv = start_server({**model_home.env(), "MT_THREADS": "1"}, log)
    try:
        wait_until(srv, "/readyz")
        main = psutil.Process(srv.process.pid)
        family = [main, *main.children(recursive=True)]
        data = encode(tile(1024, 1024, seed=8, blobs=4))
        n = 6
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            done_at: list[float] = []
            futures = [pool.submit(srv.post_image, "/segment", data, timeout=120) for _ in range(n)]
            for future in futures:
                future.add_done_callback(lambda _: done_at.append(time.monotonic()))
            deadline = time.monotonic() + 20
            while in_progress(srv, "/segment") < n and time.monotonic() < deadline:
                time.sleep(0.05)
            in_flight = in_progress(srv, "/segment")
            assert in_flight == n, f"only {in_flight} of {n} requests reached the server"
            signalled = time.monotonic()
            os.kill(srv.process.pid, signal.SIGTERM)
            answers = [f.result(timeout=120) for f in futures]
        statuses = [r.status_code for r in answers]
        assert statuses == [200] * n, [(r.status_code, r.text[:200]) for r in answers]
        for r in answers:
            assert Image.open(io.BytesIO(r.content)).size == (1024, 1024)
        assert max(done_at) > signalled, "every request had finished before the signal: nothing was in flight"
        srv.process.wait(timeout=30)
        exited_after = time.monotonic() - signalled
        assert srv.process.returncode == 0, (
            f"`bentoml serve` exited with {srv.process.returncode} after SIGTERM, not a clean shutdown (0):\n"
            f"{srv.log_tail()}"
        )
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"still running after SIGTERM: {alive}"
        late = sum(t > signalled for t in done_at)
        print(
            f"\nSIGTERM with {n} requests in flight: {n}x 200 ({late} answered after the signal, the last "
            f"{max(done_at) - signalled:.1f} s after it), exit code {srv.process.returncode}, "
            f"all {len(family)} processes gone {exited_after:.1f} s after the signal"
        )
        with pytest.raises(requests.ConnectionError):
            srv.get("/livez", timeout=2)
    finally:
        stop_server(srv)


# ====================================================================== security


def test_listens_only_on_the_address_given(server):
    """Started with --host 127.0.0.1: the listening socket is bound to 127.0.0.1 only, and the
    port cannot be reached on any other local address of this machine."""
    port = int(server.url.rsplit(":", 1)[1])
    listening = [
        c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    others = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6) and not a.address.startswith(("127.", "fe80"))
    ]
    for address in others:  # includes ::1 and this machine's LAN address(es), when it has them
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, f"port {port} reachable on {address}"
    assert server.get("/livez").status_code == 200  # reachable where it was asked to listen
    print(f"\nlistening on 127.0.0.1:{port} only; refused on {others or 'no other address'}")


def test_no_model_management_endpoint(server):
    spec = server.get("/docs.json").json()
    assert set(spec["paths"]) == DOCUMENTED_PATHS
    for path, operations in spec["paths"].items():
        expected = {"post"} if path in ROUTES else {"get"}
        assert set(operations) == expected, (path, operations)
    for path in (
        "/models",
        "/model",
        "/admin",
        "/api/models",
        "/v1/models",
        "/v1/models/magnetic-tile-segmenter",
        "/models/magnetic-tile-segmenter/load",
        "/reload",
        "/load",
        "/unload",
        "/upload",
        "/shutdown",
        "/bentos",
        "/deployments",
        "/config",
        "/debug",
        "/api/v1/admin",
        "/_internal",
        "/tasks",
    ):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = requests.request(method, server.url + path, data=b"{}", timeout=10)
            assert response.status_code in (404, 405), (method, path, response.status_code)
    for path in ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json", "/"):
        for method in ("POST", "PUT", "DELETE"):
            assert requests.request(method, server.url + path, timeout=10).status_code in (404, 405), (
                method,
                path,
            )
    assert server.get("/readyz").status_code == 200


def test_bentoml_is_recent_enough():
    """1.4.19 or later (older 1.4 releases have published security fixes); the `bentoml` that the
    servers run is the same installation."""
    import bentoml
    from packaging.version import Version

    assert Version(bentoml.__version__) >= Version("1.4.19"), bentoml.__version__
    out = subprocess.run([BENTOML, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and bentoml.__version__ in out.stdout, out.stdout + out.stderr
