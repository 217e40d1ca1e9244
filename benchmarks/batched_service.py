"""EXPERIMENT (benchmarks only, not the production service): /detect through BentoML adaptive batching.

    BENTOML_HOME=... MT_MODEL_TAG=... MT_BENCH_BATCHING=1 \
        bentoml serve benchmarks.batched_service:BatchedDetect --port 3100

Two services, the way BentoML 1.4 does adaptive batching: a front service (``BatchedDetect``:
multipart upload → decode) calls a model service (``Segmenter``) through ``bentoml.depends``; the
model service's ``infer`` is ``batchable``, so BentoML's dispatcher merges concurrent calls into
one list. Images in a batch have different sizes (native resolution), so each is preprocessed
exactly as ``Predictor`` does (normalise, edge-pad to stride 32) and then edge-padded further to the
batch's largest height and width; each image's logits are cropped back before the shared
restore/postprocess. The extra padding costs compute (measured in bench_batching.py) and changes
border context slightly (the max probability difference is measured there too).

MT_BENCH_BATCHING=0 gives the same two-service topology with batching off (one image per call):
the fair per-request baseline for the batching effect itself. Knobs: MT_BENCH_MAX_BATCH (8),
MT_BENCH_MAX_LATENCY_MS (10000: BentoML's dispatcher answers 503
"process is overloaded" to any request whose estimated latency, queueing included, would exceed it),
MT_THREADS (ONNX Runtime intra-op threads; unset: all cores).
Answers JSON like service.py's /detect plus ``batch_size``; headers X-Batch-Size, X-Inference-Ms
(the network time of the whole batch).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO / "src") not in sys.path:
    sys.path.insert(0, str(_REPO / "src"))

import bentoml  # noqa: E402
import numpy as np  # noqa: E402

from mtdefect.inference import DecodeError, Predictor, decode_image  # noqa: E402
from mtdefect.inference.postprocess import postprocess, restore_probability  # noqa: E402

BATCHING = os.environ.get("MT_BENCH_BATCHING", "1").strip() not in ("0", "false", "no", "")
MAX_BATCH = int(os.environ.get("MT_BENCH_MAX_BATCH", "8"))
MAX_LATENCY_MS = int(os.environ.get("MT_BENCH_MAX_LATENCY_MS", "10000"))
THREADS = int(os.environ["MT_THREADS"]) if os.environ.get("MT_THREADS", "").strip() else None


def pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Edge-pad a 1x1xHxW network input at the bottom/right to height x width."""
    h, w = array.shape[-2:]
    if (h, w) == (height, width):
        return array
    return np.pad(array, ((0, 0), (0, 0), (0, height - h), (0, width - w)), mode="edge")


def batched_probabilities(predictor: Predictor, images: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Several HxW uint8 images (each with its test-time flip views) → one network call, padded to
    the largest height and width → one probability map per image, and the network milliseconds."""
    prepared = [predictor.network_input(gray) for gray in images]
    height = max(batch.shape[-2] for batch, _ in prepared)
    width = max(batch.shape[-1] for batch, _ in prepared)
    stacked = np.concatenate([pad_to(batch, height, width) for batch, _ in prepared], axis=0)
    t0 = time.perf_counter()
    logits = predictor.runner(np.ascontiguousarray(stacked))[0]
    network_ms = (time.perf_counter() - t0) * 1000.0
    probabilities, start = [], 0
    for batch, geometry in prepared:
        h, w = batch.shape[-2:]
        views = logits[start : start + len(batch), :, :h, :w]
        probabilities.append(restore_probability(predictor.merge_views(views), geometry))
        start += len(batch)
    return probabilities, network_ms


def infer_batch(predictor: Predictor, images: list[np.ndarray]) -> tuple[list[dict], float]:
    """Several HxW uint8 images → one padded network call → one answer per image."""
    settings = predictor.settings
    probabilities, network_ms = batched_probabilities(predictor, images)
    answers = []
    for probability in probabilities:
        prediction = postprocess(probability, settings.postprocess)
        answers.append(
            {
                "defective": prediction.defective,
                "score": round(prediction.score, 6),
                "threshold": settings.postprocess.threshold,
                "defect_area_fraction": round(prediction.defect_area_fraction, 8),
                "regions": [r.to_dict() for r in prediction.regions],
                "batch_size": len(images),
                "batch_network_ms": round(network_ms, 3),
            }
        )
    return answers, network_ms


@bentoml.service(workers=1, traffic={"timeout": 120, "max_concurrency": 256})
class Segmenter:
    """The model; ``infer`` takes a list of grayscale images (batchable when MT_BENCH_BATCHING=1)."""

    def __init__(self) -> None:
        from mtdefect import store

        path = store.model_path(os.environ.get("MT_MODEL_TAG", "magnetic-tile-segmenter:latest"))
        self.predictor = Predictor.from_dir(path, backend="onnx", threads=THREADS)
        infer_batch(self.predictor, [np.full((96, 160), 110, dtype=np.uint8)])  # warm-up

    @bentoml.api(batchable=BATCHING, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, images: list[np.ndarray]) -> list[dict]:
        answers, _ = infer_batch(self.predictor, list(images))
        return answers


@bentoml.service(workers=1, traffic={"timeout": 120, "max_concurrency": 256})
class BatchedDetect:
    """Front: multipart ``image`` upload → decode → Segmenter.infer([image]) → JSON."""

    segmenter = bentoml.depends(Segmenter)

    @bentoml.api(route="/detect")
    async def detect(self, image: Path, ctx: bentoml.Context) -> dict:
        import anyio

        data = await anyio.to_thread.run_sync(Path(image).read_bytes)
        try:
            gray = await anyio.to_thread.run_sync(decode_image, data)
        except DecodeError as exc:
            ctx.response.status_code = exc.status
            return {"error": str(exc)}
        answer = (await self.segmenter.to_async.infer([gray]))[0]
        ctx.response.metadata["X-Batch-Size"] = str(answer["batch_size"])
        ctx.response.metadata["X-Inference-Ms"] = f"{answer['batch_network_ms']:.1f}"
        return answer
