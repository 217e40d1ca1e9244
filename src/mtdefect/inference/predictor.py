"""Run a saved model on images: PyTorch (CPU or CUDA) or ONNX Runtime (CPU), same pre/postprocessing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from mtdefect.inference.postprocess import Prediction, postprocess, restore_probability, softmax_scores
from mtdefect.inference.preprocess import InputGeometry, preprocess
from mtdefect.inference.settings import FLIP_AXES, ONNX_FILE, ONNX_INT8_FILE, WEIGHTS_FILE, ModelSettings

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
# N x 1 x H x W float32 → (N x 1 x H x W pixel logits, N x K tile logits or None without a head)
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


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

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = session.run(None, {input_name: batch})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    return run


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


class Predictor:
    """Image (HxW uint8) → Prediction, through the model's own settings."""

    def __init__(self, settings: ModelSettings, runner: Runner, backend: str) -> None:
        self.settings = settings
        self.runner = runner
        self.backend = backend

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, backend: Backend = "auto", threads: int | None = None
    ) -> Predictor:
        """``auto``: PyTorch on CUDA when a GPU is present, else ONNX Runtime when the model has an
        ONNX export, else PyTorch on CPU. ``onnx-int8``: the static INT8 export (``model.int8.onnx``)."""
        model_dir = Path(model_dir)
        settings = ModelSettings.load(model_dir)
        onnx_path = model_dir / ONNX_FILE
        if backend == "auto":
            backend = "torch" if _cuda_available() or not onnx_path.exists() else "onnx"
        if backend == "onnx":
            if not onnx_path.exists():
                raise FileNotFoundError(f"no ONNX export in {model_dir}: run the export stage")
            return cls(settings, onnx_runner(onnx_path, threads), "onnx")
        if backend == "onnx-int8":
            if not (model_dir / ONNX_INT8_FILE).exists():
                raise FileNotFoundError(f"no INT8 export in {model_dir}: run the export stage")
            return cls(settings, onnx_runner(model_dir / ONNX_INT8_FILE, threads), "onnx-int8")
        if backend == "torch":
            import torch

            if threads:
                torch.set_num_threads(threads)
            device = "cuda" if _cuda_available() else "cpu"
            net = load_torch_net(model_dir, settings, device)
            return cls(settings, torch_runner(net, device), f"torch-{device}")
        raise ValueError(f"unknown backend {backend!r}: choose auto, torch, onnx or onnx-int8")

    def with_flips(self, flips: Sequence[str]) -> Predictor:
        """The same network and settings with other test-time flips (for calibration)."""
        return Predictor(replace(self.settings, test_time_flips=tuple(flips)), self.runner, self.backend)

    @property
    def views(self) -> int:
        """Network inputs per image: the original plus one per test-time flip."""
        return 1 + len(self.settings.test_time_flips)

    def network_input(self, gray: np.ndarray) -> tuple[np.ndarray, InputGeometry]:
        """HxW uint8 → (views x 1 x H' x W' float32: the preprocessed image, then its flipped
        copies), and the geometry that undoes the preprocessing."""
        batch, geometry = preprocess(gray, self.settings.preprocess)
        flips = self.settings.test_time_flips
        if flips:
            batch = np.ascontiguousarray(
                np.concatenate([batch] + [np.flip(batch, FLIP_AXES[f]) for f in flips])
            )
        return batch, geometry

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

    def infer(self, gray: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """HxW uint8 → (HxW float32 defect probability at the input's size, the tile head's
        {class: probability} or {}), from one network call. With test-time flips, the original and
        its flipped copies go through the network as one batch and the logits, flipped back, are
        averaged."""
        batch, geometry = self.network_input(gray)
        logits, tile_logits = self.runner(batch)
        return restore_probability(self.merge_views(logits), geometry), self.class_scores(tile_logits)

    def probability(self, gray: np.ndarray) -> np.ndarray:
        """HxW uint8 → HxW float32 defect probability at the input's size (see ``infer``)."""
        return self.infer(gray)[0]

    def predict(self, gray: np.ndarray) -> tuple[Prediction, float]:
        """HxW uint8 → (Prediction, milliseconds spent)."""
        start = time.perf_counter()
        probability, class_scores = self.infer(gray)
        prediction = postprocess(probability, self.settings.postprocess, class_scores)
        return prediction, (time.perf_counter() - start) * 1000.0
