"""Run a saved model on images: PyTorch (CPU or CUDA) or ONNX Runtime (CPU), same pre/postprocessing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from mtdefect.inference.postprocess import (
    Prediction,
    postprocess,
    restore_probability,
    softmax_scores,
    summed_defect_probability,
)
from mtdefect.inference.preprocess import InputGeometry, preprocess
from mtdefect.inference.settings import FLIP_AXES, ONNX_FILE, ONNX_INT8_FILE, WEIGHTS_FILE, ModelSettings

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
# N x 1 x H x W float32 → (N x 1 x H x W pixel logits, N x K tile logits or None without a head)
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
# Called before each network pass of a windowed image; raising stops the work (the service: client
# gone, or its deadline passed).
Check = Callable[[], None]

# Sliding-window inference (``Predictor.window``): a network input larger than WINDOW x WINDOW is run
# as overlapping WINDOW x WINDOW windows, so the network's memory is bounded by one window, not by the
# image (at 4096² whole-image activations take ~9-11 GB). Every dataset tile (≤ 632 x 403) fits in one
# window and is run whole, exactly as before. 1088 = 1024 + OVERLAP: a 4096-pixel side is 4 windows.
WINDOW = 1088
OVERLAP = 64  # each window's outer OVERLAP / 2 pixels are replaced by the neighbour's centre
SHRINK_PIXELS = 1 << 20  # network inputs of at least this many values give ORT's arena back after the run


def load_torch_net(model_dir: str | Path, settings: ModelSettings, device: str = "cpu"):
    """Rebuild the network and load its safetensors weights (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mtdefect.inference.network import build_net

    net = build_net(**settings.net)
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        state = load_file(str(path), device="cpu")
    except SafetensorError as exc:  # e.g. a pickle renamed to .safetensors: refused, never unpickled
        raise ValueError(
            f"model weights unreadable: {path} is not a valid safetensors file ({exc})"
        ) from None
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def torch_runner(net, device: str = "cpu") -> Runner:
    import torch

    from mtdefect.inference.network import split_outputs

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            logits, tile_logits = split_outputs(net(torch.from_numpy(batch).to(device)))
            return (
                logits.float().cpu().numpy(),
                None if tile_logits is None else tile_logits.float().cpu().numpy(),
            )

    return run


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    # ORT's CPU arena keeps the largest run's activations for good; after a large input (a window of
    # a large image) it is shrunk back, so memory returns; small tiles keep the arena (and its speed)
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        options = shrink if batch.size >= SHRINK_PIXELS else None
        outputs = session.run(None, {input_name: batch}, options)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    return run


def _cuda_available() -> bool:
    """A CUDA GPU PyTorch can use. Without an NVIDIA driver on the machine the answer is no without
    importing torch (its import alone holds ~0.5 GB of a server worker's memory)."""
    if not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")):
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


class Predictor:
    """Image (HxW uint8) → Prediction, through the model's own settings."""

    def __init__(
        self,
        settings: ModelSettings,
        runner: Runner,
        backend: str,
        window: int | None = WINDOW,
        overlap: int = OVERLAP,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.backend = backend
        stride = settings.preprocess.stride
        if window is not None and (window % stride or overlap % stride or not 0 <= overlap < window):
            raise ValueError(
                f"window {window} and overlap {overlap} must be multiples of the stride {stride}, "
                "overlap smaller than window"
            )
        self.window, self.overlap = window, overlap

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        backend: Backend = "auto",
        threads: int | None = None,
        window: int | None = WINDOW,
    ) -> Predictor:
        """``auto``: PyTorch on CUDA when a GPU is present, else ONNX Runtime when the model has an
        ONNX export, else PyTorch on CPU. ``onnx-int8``: the static INT8 export (``model.int8.onnx``).
        ``window``: see ``infer`` (None: always the whole image)."""
        model_dir = Path(model_dir)
        settings = ModelSettings.load(model_dir)
        onnx_path = model_dir / ONNX_FILE
        if backend == "auto":
            backend = "torch" if _cuda_available() or not onnx_path.exists() else "onnx"
        if backend == "onnx":
            if not onnx_path.exists():
                raise FileNotFoundError(f"no ONNX export in {model_dir}: run the export stage")
            return cls(settings.for_backend("onnx"), onnx_runner(onnx_path, threads), "onnx", window)
        if backend == "onnx-int8":
            if not (model_dir / ONNX_INT8_FILE).exists():
                raise FileNotFoundError(f"no INT8 export in {model_dir}: run the export stage")
            runner = onnx_runner(model_dir / ONNX_INT8_FILE, threads)
            return cls(settings.for_backend("onnx-int8"), runner, "onnx-int8", window)
        if backend == "torch":
            import torch

            if threads:
                torch.set_num_threads(threads)
            device = "cuda" if _cuda_available() else "cpu"
            net = load_torch_net(model_dir, settings, device)
            return cls(settings.for_backend("torch"), torch_runner(net, device), f"torch-{device}", window)
        raise ValueError(f"unknown backend {backend!r}: choose auto, torch, onnx or onnx-int8")

    def with_flips(self, flips: Sequence[str]) -> Predictor:
        """The same network and settings with other test-time flips (for calibration)."""
        settings = replace(self.settings, test_time_flips=tuple(flips))
        return Predictor(settings, self.runner, self.backend, self.window, self.overlap)

    @property
    def views(self) -> int:
        """Network inputs per image: the original plus one per test-time flip."""
        return 1 + len(self.settings.test_time_flips)

    def network_input(self, gray: np.ndarray) -> tuple[np.ndarray, InputGeometry]:
        """HxW uint8 → (views x 1 x H' x W' float32: the preprocessed image, then its flipped
        copies), and the geometry that undoes the preprocessing."""
        batch, geometry = preprocess(gray, self.settings.preprocess)
        return self._views(batch), geometry

    def _views(self, batch: np.ndarray) -> np.ndarray:
        flips = self.settings.test_time_flips
        if not flips:
            return batch
        return np.ascontiguousarray(np.concatenate([batch] + [np.flip(batch, FLIP_AXES[f]) for f in flips]))

    def merge_views(self, logits: np.ndarray) -> np.ndarray:
        """(views x 1 x H x W) logits of one image → H x W: each flipped view flipped back, averaged."""
        merged = logits[0, 0]
        for view, name in zip(logits[1:], self.settings.test_time_flips):
            merged = merged + np.flip(view[0], tuple(axis - 2 for axis in FLIP_AXES[name]))
        return merged / self.views if self.views > 1 else merged

    def class_scores(self, tile_logits: np.ndarray | None) -> dict[str, float]:
        """(views x K) tile logits of one image → {class: probability} (views' logits averaged)."""
        if tile_logits is None:
            return {}
        return softmax_scores(np.asarray(tile_logits).mean(axis=0), self.settings.class_names)

    def infer(self, gray: np.ndarray, check: Check | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """HxW uint8 → (HxW float32 defect probability at the input's size, the tile head's
        {class: probability} or {}), from one network call. With test-time flips, the original and
        its flipped copies go through the network as one batch and the logits, flipped back, are
        averaged.

        A network input larger than ``window`` on a side is run window by window (``windowed``);
        ``check`` is called before each window."""
        batch, geometry = preprocess(gray, self.settings.preprocess)
        height, width = geometry.padded
        if self.window is None or (height <= self.window and width <= self.window):
            logits, tile_logits = self.runner(self._views(batch))
            return restore_probability(self.merge_views(logits), geometry), self.class_scores(tile_logits)
        logits, class_scores = self.windowed(batch[0, 0], check)
        del batch
        return restore_probability(logits, geometry), class_scores

    def windowed(self, image: np.ndarray, check: Check | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Sliding-window inference on a preprocessed H' x W' input (normalised with the whole
        image's statistics, padded to the stride): overlapping windows of ``window`` pixels (fewer
        where the image is smaller), their starts on the stride grid, so each window sees exactly
        the pixels the whole-image pass would. Each output pixel is taken from the window whose
        centre is nearest (the seam halfway through the overlap), so only ``overlap`` / 2 pixels of
        context are lost at a seam. The tile head answers per window; the image gets the answer of
        its most defective window (lowest free-class probability), so a defect anywhere flags it."""
        assert self.window is not None
        rows = _spans(image.shape[0], self.window, self.overlap)
        cols = _spans(image.shape[1], self.window, self.overlap)
        logits = np.empty(image.shape, dtype=np.float32)
        answers: list[dict[str, float]] = []
        for y0, y1, keep_y in rows:
            for x0, x1, keep_x in cols:
                if check is not None:
                    check()
                window = np.ascontiguousarray(image[None, None, y0:y1, x0:x1])
                out, tile_logits = self.runner(self._views(window))
                merged = self.merge_views(out)
                (a, b), (c, d) = keep_y, keep_x
                logits[a:b, c:d] = merged[a - y0 : b - y0, c - x0 : d - x0]
                answers.append(self.class_scores(tile_logits))
        return logits, self._most_defective(answers)

    def _most_defective(self, answers: list[dict[str, float]]) -> dict[str, float]:
        free = self.settings.postprocess.free_class
        if not answers or not answers[0]:
            return {}
        if free in answers[0]:
            return max(answers, key=lambda scores: summed_defect_probability(scores, free))
        return {k: float(np.mean([a[k] for a in answers])) for k in answers[0]}

    def probability(self, gray: np.ndarray) -> np.ndarray:
        """HxW uint8 → HxW float32 defect probability at the input's size (see ``infer``)."""
        return self.infer(gray)[0]

    def predict(self, gray: np.ndarray, check: Check | None = None) -> tuple[Prediction, float]:
        """HxW uint8 → (Prediction, milliseconds spent)."""
        start = time.perf_counter()
        probability, class_scores = self.infer(gray, check)
        prediction = postprocess(probability, self.settings.postprocess, class_scores)
        return prediction, (time.perf_counter() - start) * 1000.0


def _spans(size: int, window: int, overlap: int) -> list[tuple[int, int, tuple[int, int]]]:
    """Windows along one axis of ``size`` pixels: (start, stop, (keep_from, keep_to)); the kept
    ranges tile [0, size) exactly, each seam halfway through an overlap."""
    if size <= window:
        return [(0, size, (0, size))]
    step = window - overlap
    starts = list(range(0, size - window + 1, step))
    if starts[-1] + window < size:
        starts.append(size - window)
    spans = []
    for i, start in enumerate(starts):
        lo = 0 if i == 0 else (start + starts[i - 1] + window) // 2
        hi = size if i == len(starts) - 1 else (starts[i + 1] + start + window) // 2
        spans.append((start, start + window, (lo, hi)))
    return spans
