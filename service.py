"""Magnetic tile defect API (BentoML 1.4).

    bentoml serve service:MagneticTileService --port 3000

POST /segment, /detect, /overlay take multipart/form-data with one file field ``image``, and
/detect_tile the 1 to 6 photographs of one tile (the ``image`` field repeated); health
(/livez, /readyz) and /metrics are BentoML's. Settings come from MT_* environment variables
(mtdefect.serving.config, docs/API.md). Every refusal is a 4xx with ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
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
from mtdefect.inference.multiview import MAX_VIEWS, TileDecision, decide_tile
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
    TileResult,
    TileUpload,
    ViewOut,
    with_error_responses,
)
from mtdefect.serving.upload import FormImage, images_from_form, read_body

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

    @bentoml.api(route="/detect_tile", input_spec=TileUpload, output_spec=TileResult)
    async def detect_tile(self, image: PendingUpload) -> Response:
        """One decision for a physical tile from the photographs of its lightings (1 to 6 ``image``
        parts, any order): the views' scores fused (median by default) against the tile threshold,
        and each view's own answer with its mask."""
        return await self._answer(image, self._tile_detection, views=MAX_VIEWS)

    @bentoml.api(route="/overlay", input_spec=ImageUpload, output_spec=PngImage)
    async def overlay(self, image: PendingUpload) -> Response:
        """The input as an RGB PNG with each defect region tinted, outlined and framed in its class's colour,
        and a legend strip below the image naming the classes present (models without a class head: red
        tint, yellow outline, no strip)."""
        return await self._answer(image, self._overlay_png)

    async def _answer(self, upload: PendingUpload, render, views: int = 1) -> Response:
        """Read, admit, decode and predict the request's image(s) (``views`` at most), then
        ``render``: ``render(gray, prediction, ms)`` for one image, ``render(uploads, grays,
        predictions, ms)`` for a multi-view request."""
        request = upload.request
        deadline = Deadline(request.scope.get(ARRIVED, time.monotonic()), CONFIG.timeout_s)
        try:
            if not self.runtime.ready:
                raise ApiError(503, f"service not ready: {self.runtime.problem}")
            body = await read_body(request.stream(), CONFIG.body_limit(views))
            uploads = images_from_form(body, request.headers.get("content-type"), views)
            del body
            pixels = sum(header_pixels(u.data) for u in uploads)
            if pixels > self._budget.limit:
                raise ApiError(
                    413,
                    f"the {len(uploads)} images hold {pixels} pixels together, over this worker's pixel "
                    f"budget of {self._budget.limit} (MT_PIXEL_BUDGET / MT_WORKERS): send smaller images",
                )
            # the images' share of the pixel budget, for as long as they are decoded; waiting for it
            # ends in time to compute the answer before the deadline, or in a 503
            cost = self._cost.estimate(pixels)
            if not await self._budget.acquire(pixels, deadline.left() - cost):
                raise busy("the service is busy with other images; retry later", cost + 1)
            try:
                grays, predictions, ms = await self._compute(request, uploads, deadline)
                if views == 1:
                    return await anyio.to_thread.run_sync(render, grays[0], predictions[0], ms[0])
                return await anyio.to_thread.run_sync(render, uploads, grays, predictions, ms)
            finally:
                await self._budget.release(pixels)
                if pixels >= LARGE_PIXELS and self._budget.used == 0:
                    await anyio.to_thread.run_sync(trim_memory)
        except ApiError as exc:
            return exc.response()
        except Exception:
            logger.exception("unexpected error while answering %s", request.url.path)
            return error_response(500, "internal error: the request could not be processed (see server log)")

    async def _compute(
        self, request, uploads: list[FormImage], deadline: Deadline
    ) -> tuple[list[np.ndarray], list[Prediction], list[float]]:
        grays = []
        for index, upload in enumerate(uploads):
            grays.append(await anyio.to_thread.run_sync(self._decode, upload.data, index, len(uploads)))
        uploads = [FormImage(b"", u.filename) for u in uploads]  # the encoded bytes are not needed now
        stop = Stop(deadline)
        outcome: list = []
        async with anyio.create_task_group() as watchers:  # the watcher lives as long as the work
            watchers.start_soon(watch_disconnect, request, stop)
            try:
                outcome.append(await self._infer(grays, stop))
            except Exception as exc:  # raised below, outside the group (not as an ExceptionGroup)
                outcome.append(exc)
            stop.event.set()  # ends the watcher
            watchers.cancel_scope.cancel()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        predictions, ms = outcome[0]
        for gray, prediction in zip(grays, predictions):
            monitoring.record_prediction(request.url.path, prediction, gray.shape)
        return grays, predictions, ms

    async def _infer(self, grays: list[np.ndarray], stop: Stop) -> tuple[list[Prediction], list[float]]:
        """Wait for the network (one request at a time) no longer than leaves time to compute these
        images before the deadline; a client that left meanwhile is not computed."""
        pixels = sum(gray.size for gray in grays)
        cost = self._cost.estimate(pixels)
        with anyio.move_on_after(max(stop.deadline.left() - cost, 0.0)) as waiting:
            await self._inference.acquire()
        if waiting.cancelled_caught:
            raise busy("the service is busy with other images; retry later", cost + 1)
        try:
            predictions, times = [], []
            started = time.perf_counter()
            for gray in grays:
                stop.check()  # gone, or out of time, while waiting: nothing (more) is computed
                prediction, ms = await anyio.to_thread.run_sync(self._predict, gray, stop.check)
                predictions.append(prediction)
                times.append(ms)
            self._cost.observe(pixels, time.perf_counter() - started)
            return predictions, times
        finally:
            self._inference.release()

    def _decode(self, data: bytes, index: int = 0, count: int = 1) -> np.ndarray:
        try:
            return decode_image(data, self.runtime.limits)
        except DecodeError as exc:
            where = f"image {index + 1} of {count}: " if count > 1 else ""
            raise ApiError(exc.status, f"{where}{exc}") from None

    def _predict(self, gray: np.ndarray, check) -> tuple[Prediction, float]:
        try:
            return self.runtime.predict(gray, check)
        except ModelUnavailable as exc:
            logger.error("refused to answer: %s", exc)
            raise ApiError(503 if not self.runtime.ready else 500, f"no valid model output: {exc}") from None

    def _headers(self, answer: Prediction | TileDecision, ms: float) -> dict[str, str]:
        return {
            "X-Model": self.runtime.tag or "",
            "X-Defective": str(answer.defective).lower(),
            "X-Score": f"{answer.score:.6f}",
            "X-Defect-Class": answer.defect_class or "",
            "X-Inference-Ms": f"{ms:.1f}",
        }

    def _mask_png(self, gray: np.ndarray, prediction: Prediction, ms: float) -> Response:
        return Response(_png(prediction.mask), media_type="image/png", headers=self._headers(prediction, ms))

    def _overlay_png(self, gray: np.ndarray, prediction: Prediction, ms: float) -> Response:
        picture = class_overlay(gray, prediction.mask, prediction.regions)
        return Response(_png(picture), media_type="image/png", headers=self._headers(prediction, ms))

    def _answer_fields(self, prediction: Prediction, ms: float) -> dict:
        """What /detect says of one image (also each view of /detect_tile)."""
        return dict(
            defective=prediction.defective,
            score=round(prediction.score, 6),
            decision_threshold=self.runtime.decision_threshold,
            mask_gate_threshold=self.runtime.mask_gate_threshold,
            mask_gate_window=self.runtime.mask_gate_window,
            threshold=self.runtime.threshold,
            score_source=self.runtime.score_source,
            defect_area_fraction=round(prediction.defect_area_fraction, 8),
            regions=[region.to_dict() for region in prediction.regions],
            defect_class=prediction.defect_class,
            class_scores={name: round(p, 6) for name, p in prediction.class_scores.items()},
            model=self.runtime.tag or "",
            inference_ms=round(ms, 3),
        )

    def _detection(self, gray: np.ndarray, prediction: Prediction, ms: float) -> Response:
        result = DetectResult(**self._answer_fields(prediction, ms))
        return JSONResponse(
            result.model_dump(mode="json", by_alias=True), headers=self._headers(prediction, ms)
        )

    def _tile_detection(
        self,
        uploads: list[FormImage],
        grays: list[np.ndarray],
        predictions: list[Prediction],
        ms: list[float],
    ) -> Response:
        assert self.runtime.predictor is not None
        tile = decide_tile(predictions, self.runtime.predictor.settings.postprocess)
        views = [
            ViewOut(
                **self._answer_fields(prediction, view_ms),
                index=index,
                filename=upload.filename,
                width=int(gray.shape[1]),
                height=int(gray.shape[0]),
                mask_png=base64.b64encode(_png(prediction.mask)).decode("ascii")
                if prediction.mask.any()
                else "",
            )
            for index, (upload, gray, prediction, view_ms) in enumerate(zip(uploads, grays, predictions, ms))
        ]
        result = TileResult(
            defective=tile.defective,
            score=round(tile.score, 6),
            fusion=tile.fusion,
            tile_threshold=tile.threshold,
            defect_class=tile.defect_class,
            views=views,
            model=self.runtime.tag or "",
            inference_ms=round(sum(ms), 3),
        )
        return JSONResponse(
            result.model_dump(mode="json", by_alias=True), headers=self._headers(tile, sum(ms))
        )


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


MagneticTileService.add_asgi_middleware(
    ApiGuard,
    paths=API_ROUTES,
    max_body_bytes=CONFIG.max_body_bytes,
    api_key=CONFIG.api_key,
    body_limits={"/detect_tile": CONFIG.body_limit(MAX_VIEWS)},
)
