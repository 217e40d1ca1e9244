"""Service settings, read once from the environment (documented in docs/API.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mtdefect.store import MODEL_NAME

DEFAULT_MODEL_TAG = f"{MODEL_NAME}:latest"
BACKENDS = ("auto", "onnx", "onnx-int8", "torch")


class ConfigError(ValueError):
    """An MT_* environment variable has a value the service cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={value} must be positive")
    return value


@dataclass(frozen=True)
class ServeConfig:
    """What the operator can tune without touching code.

    model_tag: model store tag to serve (``MT_MODEL_TAG``).
    backend: ``auto`` (CUDA PyTorch if a GPU is present; else the precision the package stage
        recorded in the model store entry (``onnx-int8`` when INT8 kept the answers and paid off,
        else ``onnx``); for older entries ONNX Runtime if the model has an ONNX export, else PyTorch
        CPU), ``onnx``, ``onnx-int8`` or ``torch`` (``MT_BACKEND``).
    max_bytes: largest accepted image file (``MT_MAX_BYTES``); requests whose Content-Length exceeds
        it (plus a small allowance for the multipart envelope) are refused before the body is read.
    max_pixels: largest accepted width x height, checked from the image header (``MT_MAX_PIXELS``).
    api_key: when set, API calls need ``Authorization: Bearer <key>`` (``MT_API_KEY``).
    timeout_s: every request is answered within this long (``MT_TIMEOUT_S``): one that cannot be
        finished in time answers 503 with Retry-After a little before it (mtdefect.serving.admission),
        so BentoML's own 504 at this limit is a last resort.
    max_concurrency: requests in flight per service above which new ones answer 429 at once
        (``MT_MAX_CONCURRENCY``).
    workers: server processes, each with its own copy of the model (``MT_WORKERS``).
    threads: inference threads per model (``MT_THREADS``; unset = all cores).
    pixel_budget: pixels of images in flight (decoded, not yet answered) per service, at most
        (``MT_PIXEL_BUDGET``; default twice ``max_pixels``, at least ``max_pixels``), split across
        the workers (each gets ``worker_pixel_budget``); requests wait for room, up to their
        deadline, then answer 503 with Retry-After.
    window: network inputs larger than this on a side run as overlapping windows of this size, which
        bounds the network's memory (``MT_WINDOW``, a multiple of 32; 0 = always whole images).
    """

    model_tag: str = DEFAULT_MODEL_TAG
    backend: str = "auto"
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    api_key: str | None = None
    timeout_s: float = 60.0
    max_concurrency: int = 16
    workers: int = 1
    threads: int | None = None
    pixel_budget: int = 2 * 4096 * 4096
    window: int | None = 1088

    # Room for the multipart envelope (boundaries, part headers) on top of the image itself.
    envelope_bytes: int = 64 * 1024

    @property
    def worker_pixel_budget(self) -> int:
        """Each worker's share of ``pixel_budget``; never below ``max_pixels`` (the largest image)."""
        return max(self.max_pixels, self.pixel_budget // self.workers)

    @property
    def max_body_bytes(self) -> int:
        return self.max_bytes + self.envelope_bytes

    def body_limit(self, images: int) -> int:
        """The largest request body of an endpoint taking up to ``images`` image files."""
        return images * self.max_bytes + self.envelope_bytes

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        env = os.environ if env is None else env
        backend = env.get("MT_BACKEND", "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ConfigError(f"MT_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
        threads_raw = env.get("MT_THREADS", "").strip()
        max_pixels = _int(env, "MT_MAX_PIXELS", cls.max_pixels)
        pixel_budget = _int(env, "MT_PIXEL_BUDGET", 2 * max_pixels)
        if pixel_budget < max_pixels:
            raise ConfigError(
                f"MT_PIXEL_BUDGET={pixel_budget} is below MT_MAX_PIXELS={max_pixels}: "
                "the largest accepted image would never fit"
            )
        window = _int(env, "MT_WINDOW", cls.window or 0, minimum=0)
        if window % 32:
            raise ConfigError(f"MT_WINDOW={window} must be a multiple of 32 (0: no windows)")
        return cls(
            model_tag=env.get("MT_MODEL_TAG", "").strip() or DEFAULT_MODEL_TAG,
            backend=backend,
            max_bytes=_int(env, "MT_MAX_BYTES", cls.max_bytes),
            max_pixels=max_pixels,
            api_key=env.get("MT_API_KEY") or None,
            timeout_s=_float(env, "MT_TIMEOUT_S", cls.timeout_s),
            max_concurrency=_int(env, "MT_MAX_CONCURRENCY", cls.max_concurrency),
            workers=_int(env, "MT_WORKERS", cls.workers),
            threads=_int(env, "MT_THREADS", 1) if threads_raw else None,
            pixel_budget=pixel_budget,
            window=window or None,
        )
