"""Magnetic tile defect API (BentoML 1.4).

    bentoml serve service:MagneticTileService --port 3000

POST /segment, /detect, /overlay take multipart/form-data with one file field ``image``; health
(/livez, /readyz) and /metrics are BentoML's. Settings come from MT_* environment variables
(mtdefect.serving.config, docs/API.md). Every refusal is a 4xx with ``{"error": "..."}``.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

try:
    import mtdefect  # noqa: F401  (installed in development)
except ImportError:  # inside a built bento the package travels as src/mtdefect next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import anyio
import bentoml
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mtdefect.inference import DecodeError, Prediction, decode_image
from mtdefect.inference.overlay import class_overlay
from mtdefect.serving import monitoring
from mtdefect.serving.admission import (
    LARGE_PIXELS,
    CostModel,
    Deadline,
    PixelBudget,
    Stop,
    busy,
    header_pixels,
    trim_memory,
    watch_disconnect,
)
from mtdefect.serving.config import ServeConfig
from mtdefect.serving.errors import ApiError, error_response
from mtdefect.serving.guard import ARRIVED, ApiGuard
from mtdefect.serving.pages import page_routes
from mtdefect.serving.runtime import WARMUP_SHAPE, ModelRuntime, ModelUnavailable
from mtdefect.serving.schema import (
    API_ROUTES,
    DetectResult,
    ImageUpload,
    PendingUpload,
    PngImage,
    with_error_responses,
)
from mtdefect.serving.upload import image_from_form, read_body

logger = logging.getLogger("bentoml.serve.mtdefect")
CONFIG = ServeConfig.from_env()


_spec: dict | None = None


async def _openapi(_: Request) -> JSONResponse:
    global _spec
    if _spec is None:
        _spec = with_error_responses(MagneticTileService.openapi_spec.asdict())
    return JSONResponse(_spec)


# Served in place of BentoML's /docs.json: the same document, plus the error statuses the API answers;
# and in place of BentoML's index page (it loads Google Tag Manager): the operator page at /, the
# OpenAPI UI at /docs (mtdefect.serving.pages). Mounted apps are matched before BentoML's own "/".
_docs = Starlette(routes=[Route("/docs.json", _openapi, methods=["GET"]), *page_routes()])


@bentoml.asgi_app(_docs, path="/")
@bentoml.service(
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    workers=CONFIG.workers,
)
class MagneticTileService:
    """Segments surface defects (blowholes, breaks, cracks, fray, uneven) on magnetic tile images."""

    # The model is looked up in __init__, not declared as a class-level bentoml.models.BentoModel:
    # BentoML resolves declared models before serving and refuses to start when one is missing,
    # whereas this service must start, log why and stay unready. bentofile.yaml packs the model.

    def __init__(self) -> None:
        self.runtime = ModelRuntime(CONFIG).load()
        if self.runtime.ready:
            monitoring.set_model_info(self.runtime.tag, getattr(self.runtime.predictor, "backend", None))
        self._inference = anyio.CapacityLimiter(1)  # one forward pass at a time; it uses every core
        self._budget = PixelBudget(CONFIG.worker_pixel_budget)  # pixels decoded, not yet answered
        self._cost = CostModel()
        if self.runtime.ready:  # a first guess from the warm-up (small image: an overestimate)
            self._cost.observe(WARMUP_SHAPE[0] * WARMUP_SHAPE[1], self.runtime.warmup_ms / 1000.0)

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.api(route="/segment", input_spec=ImageUpload, output_spec=PngImage)
    async def segment(self, image: PendingUpload) -> Response:
        """Defect mask as a PNG with the input's width and height: 0 = background, 255 = defect."""
        return await self._answer(image, self._mask_png)

    @bentoml.api(route="/detect", input_spec=ImageUpload, output_spec=DetectResult)
    async def detect(self, image: PendingUpload) -> Response:
        """Image-level decision, score and defect regions (bounding boxes in input pixels)."""
        return await self._answer(image, self._detection)

    @bentoml.api(route="/overlay", input_spec=ImageUpload, output_spec=PngImage)
    async def overlay(self, image: PendingUpload) -> Response:
        """The input as an RGB PNG with each defect region tinted, outlined and framed in its class's colour,
        and a legend strip below the image naming the classes present (models without a class head: red
        tint, yellow outline, no strip)."""
        return await self._answer(image, self._overlay_png)

    async def _answer(self, upload: PendingUpload, render) -> Response:
        request = upload.request
        deadline = Deadline(request.scope.get(ARRIVED, time.monotonic()), CONFIG.timeout_s)
        try:
            if not self.runtime.ready:
                raise ApiError(503, f"service not ready: {self.runtime.problem}")
            body = await read_body(request.stream(), CONFIG.max_body_bytes)
            data = image_from_form(body, request.headers.get("content-type"))
            del body
            pixels = header_pixels(data)
            # the image's share of the pixel budget, for as long as it is decoded; waiting for it
            # ends in time to compute the answer before the deadline, or in a 503
            cost = self._cost.estimate(pixels)
            if not await self._budget.acquire(pixels, deadline.left() - cost):
                raise busy("the service is busy with other images; retry later", cost + 1)
            try:
                return await self._compute(request, data, deadline, render)
            finally:
                await self._budget.release(pixels)
                if pixels >= LARGE_PIXELS and self._budget.used == 0:
                    await anyio.to_thread.run_sync(trim_memory)
        except ApiError as exc:
            return exc.response()
        except Exception:
            logger.exception("unexpected error while answering %s", request.url.path)
            return error_response(500, "internal error: the request could not be processed (see server log)")

    async def _compute(self, request, data: bytes, deadline: Deadline, render) -> Response:
        gray = await anyio.to_thread.run_sync(self._decode, data)
        del data
        stop = Stop(deadline)
        outcome: list = []
        async with anyio.create_task_group() as watchers:  # the watcher lives as long as the work
            watchers.start_soon(watch_disconnect, request, stop)
            try:
                outcome.append(await self._infer(gray, stop))
            except Exception as exc:  # raised below, outside the group (not as an ExceptionGroup)
                outcome.append(exc)
            stop.event.set()  # ends the watcher
            watchers.cancel_scope.cancel()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        prediction, ms = outcome[0]
        monitoring.record_prediction(request.url.path, prediction, gray.shape)
        return await anyio.to_thread.run_sync(render, gray, prediction, ms)

    async def _infer(self, gray: np.ndarray, stop: Stop) -> tuple[Prediction, float]:
        """Wait for the network (one image at a time) no longer than leaves time to compute this
        one before the deadline; a client that left meanwhile is not computed."""
        cost = self._cost.estimate(gray.size)
        with anyio.move_on_after(max(stop.deadline.left() - cost, 0.0)) as waiting:
            await self._inference.acquire()
        if waiting.cancelled_caught:
            raise busy("the service is busy with other images; retry later", cost + 1)
        try:
            stop.check()  # gone, or out of time, while waiting: nothing is computed
            started = time.perf_counter()
            result = await anyio.to_thread.run_sync(self._predict, gray, stop.check)
            self._cost.observe(gray.size, time.perf_counter() - started)
            return result
        finally:
            self._inference.release()

    def _decode(self, data: bytes) -> np.ndarray:
        try:
            return decode_image(data, self.runtime.limits)
        except DecodeError as exc:
            raise ApiError(exc.status, str(exc)) from None

    def _predict(self, gray: np.ndarray, check) -> tuple[Prediction, float]:
        try:
            return self.runtime.predict(gray, check)
        except ModelUnavailable as exc:
            logger.error("refused to answer: %s", exc)
            raise ApiError(503 if not self.runtime.ready else 500, f"no valid model output: {exc}") from None

    def _headers(self, prediction: Prediction, ms: float) -> dict[str, str]:
        return {
            "X-Model": self.runtime.tag or "",
            "X-Defective": str(prediction.defective).lower(),
            "X-Score": f"{prediction.score:.6f}",
            "X-Defect-Class": prediction.defect_class or "",
            "X-Inference-Ms": f"{ms:.1f}",
        }

    def _mask_png(self, gray: np.ndarray, prediction: Prediction, ms: float) -> Response:
        return Response(_png(prediction.mask), media_type="image/png", headers=self._headers(prediction, ms))

    def _overlay_png(self, gray: np.ndarray, prediction: Prediction, ms: float) -> Response:
        picture = class_overlay(gray, prediction.mask, prediction.regions)
        return Response(_png(picture), media_type="image/png", headers=self._headers(prediction, ms))

    def _detection(self, gray: np.ndarray, prediction: Prediction, ms: float) -> Response:
        result = DetectResult(
            defective=prediction.defective,
            score=round(prediction.score, 6),
            decision_threshold=self.runtime.decision_threshold,
            threshold=self.runtime.threshold,
            score_source=self.runtime.score_source,
            defect_area_fraction=round(prediction.defect_area_fraction, 8),
            regions=[region.to_dict() for region in prediction.regions],
            defect_class=prediction.defect_class,
            class_scores={name: round(p, 6) for name, p in prediction.class_scores.items()},
            model=self.runtime.tag or "",
            inference_ms=round(ms, 3),
        )
        return JSONResponse(
            result.model_dump(mode="json", by_alias=True), headers=self._headers(prediction, ms)
        )


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


MagneticTileService.add_asgi_middleware(
    ApiGuard, paths=API_ROUTES, max_body_bytes=CONFIG.max_body_bytes, api_key=CONFIG.api_key
)
