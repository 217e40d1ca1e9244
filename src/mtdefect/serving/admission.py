"""Admission control: how much image work the service holds at once, and when a request gives up.

Memory is bounded per service, not per image:

- **pixel budget** (``MT_PIXEL_BUDGET``): the pixels of the images in flight, from the moment they
  are decoded until their answer is rendered, add up to at most the budget. The size is read from
  the image header (no pixel decoded) before the request takes its share; one that does not fit
  waits for others to finish.
- **deadline**: every request must be answered before BentoML's own timeout (``MT_TIMEOUT_S``) would
  answer 504. A request that cannot be finished by then (the wait for its share of the budget or for
  the network, plus its estimated cost, runs past ``Deadline.answer_by``) answers **503 with
  Retry-After** instead, before its work starts: nothing is computed for an answer nobody will read.
  The same holds for a client that has gone away (checked before the network runs and between the
  windows of a large image).
- **memory goes back**: glibc keeps freed memory in its arenas; after a large image, once nothing
  else is in flight, ``malloc_trim(0)`` returns it to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import threading
import time
import warnings
from dataclasses import dataclass

import anyio
from PIL import Image

from mtdefect.serving.errors import ApiError

# the answer must leave before BentoML's 504: this much of the timeout is kept in hand
MARGIN_SHARE, MARGIN_MAX_S = 0.2, 5.0
LARGE_PIXELS = 1 << 20  # after an image this large, return freed memory to the system when idle


def header_pixels(data: bytes) -> int:
    """width x height from the image header, nothing decoded; 0 when the header is unreadable (the
    decoder then refuses the upload with its own message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        return int(width) * int(height)
    except Exception:  # noqa: BLE001 — any unreadable header: decode_image says why
        return 0


def busy(message: str, retry_after_s: float) -> ApiError:
    return ApiError(503, message, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})


@dataclass
class Deadline:
    """When a request must have its answer: ``timeout_s`` after it arrived, less a margin."""

    arrived: float
    timeout_s: float

    @property
    def answer_by(self) -> float:
        return self.arrived + self.timeout_s - min(MARGIN_MAX_S, MARGIN_SHARE * self.timeout_s)

    def left(self) -> float:
        return self.answer_by - time.monotonic()


class CostModel:
    """Expected seconds of network + postprocessing for an image of n pixels: a running estimate
    of seconds per pixel (exponential average over the requests served, started from the warm-up)."""

    def __init__(self, seconds_per_pixel: float = 1e-6, weight: float = 0.3) -> None:
        self.seconds_per_pixel, self.weight = seconds_per_pixel, weight
        self._seeded = False

    def estimate(self, pixels: int) -> float:
        return self.seconds_per_pixel * pixels

    def observe(self, pixels: int, seconds: float) -> None:
        if pixels <= 0:
            return
        rate = seconds / pixels
        if not self._seeded:
            self.seconds_per_pixel, self._seeded = rate, True
        else:
            self.seconds_per_pixel += self.weight * (rate - self.seconds_per_pixel)


class PixelBudget:
    """At most ``limit`` pixels of images in flight; ``acquire`` waits (up to a time) for room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._condition: anyio.Condition | None = None

    @property
    def condition(self) -> anyio.Condition:
        if self._condition is None:  # created inside the event loop
            self._condition = anyio.Condition()
        return self._condition

    async def acquire(self, pixels: int, wait_s: float) -> bool:
        """Take ``pixels`` of the budget within ``wait_s`` seconds; False when there was no room."""
        pixels = min(pixels, self.limit)
        async with self.condition:
            with anyio.move_on_after(max(wait_s, 0.0)):
                while self.used + pixels > self.limit:
                    await self.condition.wait()
                self.used += pixels
                return True
        return False

    async def release(self, pixels: int) -> None:
        pixels = min(pixels, self.limit)
        async with self.condition:
            self.used = max(0, self.used - pixels)
            self.condition.notify_all()


class Stop:
    """Set when a request's answer is no longer wanted (client gone, deadline passed); the worker
    thread checks it between windows of a large image."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.event = threading.Event()
        self.reason = "the request was cancelled"

    def set(self, reason: str) -> None:
        self.reason = reason
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise busy(f"not computed further: {self.reason}", 1)
        if self.deadline.left() <= 0:
            raise busy("the service is busy: the answer could not be finished in time; retry later", 5)


async def watch_disconnect(request, stop: Stop, every_s: float = 0.25) -> None:
    """Poll the client's connection until cancelled; on disconnect, tell the worker to stop."""
    while not stop.event.is_set():
        if await request.is_disconnected():
            stop.set("the client disconnected")
            return
        await anyio.sleep(every_s)


_libc = None


def trim_memory() -> bool:
    """glibc ``malloc_trim(0)``: give freed heap memory back to the system (no-op elsewhere)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
