"""Load and overload over loopback, against real `bentoml serve` processes.

- 2,000 /detect requests at concurrency 16 (the default MT_MAX_CONCURRENCY) on the default server:
  zero 5xx, zero connection errors, every answer 200; req/s and latency percentiles are printed.
- Overload: 16 clients against the strict server (MT_MAX_CONCURRENCY=2, MT_TIMEOUT_S=3): the excess
  is shed at once with 429 (never queued until 504), the admitted requests keep being answered, and
  once the load stops every request is answered 200 again.

Every run is bounded in requests and in time (a deadline stops the clients) and stays on 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests

from .svc_support import API_KEY, Server, encode, tile

pytestmark = pytest.mark.slow

TOTAL, CONCURRENCY = 2000, 16
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status -> seconds
    connection_errors: list[str] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int | None, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            if status is None:
                self.connection_errors.append(error or "?")
                return
            self.statuses[status] += 1
            self.latencies.setdefault(status, []).append(seconds)

    def percentile(self, status: int, q: float) -> float:
        values = self.latencies.get(status, [])
        return float(np.percentile(values, q)) if values else float("nan")


def hammer(
    server: Server,
    data: bytes,
    total: int,
    concurrency: int,
    deadline_s: float,
    headers: dict | None = None,
    stop: threading.Event | None = None,
) -> tuple[Tally, float]:
    """``concurrency`` threads, each with its own keep-alive session, send /detect requests until
    ``total`` were sent, ``deadline_s`` passed or ``stop`` is set. Returns the tally and the wall time."""
    tally = Tally()
    budget = iter(range(total))
    budget_lock = threading.Lock()
    deadline = time.monotonic() + deadline_s
    files = {"image": ("tile.png", data, "image/png")}

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                with budget_lock:
                    if next(budget, None) is None:
                        return
                start = time.perf_counter()
                try:
                    response = session.post(server.url + "/detect", files=files, headers=headers, timeout=30)
                    tally.add(response.status_code, time.perf_counter() - start)
                    if response.status_code != 200:
                        assert response.json()["error"]
                except requests.RequestException as exc:  # refused, reset, timed out: a dropped request
                    tally.add(None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}"[:200])

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return tally, time.perf_counter() - start


def test_2000_requests_at_concurrency_16(server):
    data = encode(tile(64, 64, seed=42, blobs=2))  # a 64 x 64 tile with two blobs, ~3 KB PNG
    tally, wall = hammer(server, data, TOTAL, CONCURRENCY, deadline_s=120)
    ok = tally.latencies.get(200, [])
    print(
        f"\nload: {tally.sent} requests, concurrency {CONCURRENCY}, {wall:.1f} s, "
        f"{tally.sent / wall:.0f} req/s; "
        f"statuses {dict(tally.statuses)}, connection errors {len(tally.connection_errors)}; "
        f"latency p50 {1000 * tally.percentile(200, 50):.0f} ms, "
        f"p95 {1000 * tally.percentile(200, 95):.0f} ms, "
        f"p99 {1000 * tally.percentile(200, 99):.0f} ms, max {1000 * max(ok, default=0):.0f} ms"
    )
    assert tally.sent == TOTAL, f"only {tally.sent} sent before the deadline"
    assert not tally.connection_errors, tally.connection_errors[:5]
    assert not [s for s in tally.statuses if s >= 500], tally.statuses
    assert tally.statuses == Counter({200: TOTAL}), tally.statuses
    assert server.get("/readyz").status_code == 200
    assert "Traceback" not in server.log()


def test_overload_is_shed_fast_and_the_server_recovers(strict_server):
    """16 clients against 2 slots (MT_MAX_CONCURRENCY=2); one forward pass of a 300 x 300 tile takes
    ~100 ms on the PyTorch backend, so ~14 of 16 requests at any moment are over capacity."""
    data = encode(tile(300, 300, seed=43, blobs=3))  # the strict server's pixel cap is 90000
    tally, wall = hammer(strict_server, data, total=1500, concurrency=16, deadline_s=12, headers=AUTH)
    shed = tally.statuses[429] + tally.statuses[503]
    print(
        f"\noverload: {tally.sent} requests in {wall:.1f} s from 16 clients against MT_MAX_CONCURRENCY=2: "
        f"statuses {dict(tally.statuses)}, connection errors {len(tally.connection_errors)}; "
        f"shed (429) p50 {1000 * tally.percentile(429, 50):.1f} ms, "
        f"p95 {1000 * tally.percentile(429, 95):.1f} ms; "
        f"admitted (200) p50 {1000 * tally.percentile(200, 50):.0f} ms, "
        f"{tally.statuses[200] / wall:.0f} answers/s"
    )
    assert not tally.connection_errors, tally.connection_errors[:5]
    assert set(tally.statuses) <= {200, 429, 503}, tally.statuses  # no 504: nothing queued until it timed out
    assert shed > tally.sent / 4, "the overload was not shed"
    assert tally.statuses[200] > 0, "nothing was admitted while overloaded"
    assert tally.percentile(429, 50) < 0.5, "shedding is not fast"  # MT_TIMEOUT_S is 3 s
    assert tally.percentile(429, 50) < tally.percentile(200, 50)

    recovered_at = time.monotonic()
    statuses = [strict_server.post_image("/detect", data, headers=AUTH).status_code for _ in range(10)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses += list(
            pool.map(lambda _: strict_server.post_image("/detect", data, headers=AUTH).status_code, range(10))
        )
    print(f"after the load: {Counter(statuses)} in {time.monotonic() - recovered_at:.1f} s")
    assert statuses == [200] * 20
    assert strict_server.get("/readyz").status_code == 200
