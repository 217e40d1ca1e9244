"""Run a saved model on images: PyTorch (CPU or CUDA) or ONNX Runtime (CPU), same pre/postprocessing."""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from mtdefect.inference.postprocess import Prediction, postprocess, restore_probability
from mtdefect.inference.preprocess import preprocess
from mtdefect.inference.settings import FLIP_AXES, ONNX_FILE, WEIGHTS_FILE, ModelSettings

Backend = Literal["auto", "torch", "onnx"]
Runner = Callable[[np.ndarray], np.ndarray]  # N x 1 x H x W float32 → N x 1 x H x W logits


def load_torch_net(model_dir: str | Path, settings: ModelSettings, device: str = "cpu"):
    """Rebuild the network and load its safetensors weights (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mtdefect.model.net import build_net

    net = build_net(**settings.net)
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        state = load_file(str(path), device="cpu")
    except SafetensorError as exc:  # e.g. a pickle renamed to .safetensors: refused, never unpickled
        raise ValueError(f"model weights unreadable: {path} is not a valid safetensors file ({exc})") from None
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def torch_runner(net, device: str = "cpu") -> Runner:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device)
            return net(x).float().cpu().numpy()

    return run


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

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
    def from_dir(cls, model_dir: str | Path, backend: Backend = "auto", threads: int | None = None) -> "Predictor":
        """``auto``: PyTorch on CUDA when a GPU is present, else ONNX Runtime when the model has an
        ONNX export, else PyTorch on CPU."""
        model_dir = Path(model_dir)
        settings = ModelSettings.load(model_dir)
        onnx_path = model_dir / ONNX_FILE
        if backend == "auto":
            backend = "torch" if _cuda_available() or not onnx_path.exists() else "onnx"
        if backend == "onnx":
            if not onnx_path.exists():
                raise FileNotFoundError(f"no ONNX export in {model_dir}: run the export stage")
            return cls(settings, onnx_runner(onnx_path, threads), "onnx")
        if backend == "torch":
            import torch

            if threads:
                torch.set_num_threads(threads)
            device = "cuda" if _cuda_available() else "cpu"
            net = load_torch_net(model_dir, settings, device)
            return cls(settings, torch_runner(net, device), f"torch-{device}")
        raise ValueError(f"unknown backend {backend!r}: choose auto, torch or onnx")

    def with_flips(self, flips: Sequence[str]) -> "Predictor":
        """The same network and settings with other test-time flips (for calibration)."""
        return Predictor(replace(self.settings, test_time_flips=tuple(flips)), self.runner, self.backend)

    def probability(self, gray: np.ndarray) -> np.ndarray:
        """HxW uint8 → HxW float32 defect probability at the input's size. With test-time flips, the
        original and its flipped copies go through the network as one batch and the logits, flipped
        back, are averaged."""
        batch, geometry = preprocess(gray, self.settings.preprocess)
        axes = [FLIP_AXES[name] for name in self.settings.test_time_flips]
        if not axes:
            return restore_probability(self.runner(batch)[0, 0], geometry)
        views = np.concatenate([batch] + [np.flip(batch, a) for a in axes])
        logits = self.runner(np.ascontiguousarray(views))
        merged = logits[0] + sum(np.flip(logits[i + 1], tuple(x - 1 for x in a)) for i, a in enumerate(axes))
        return restore_probability(merged[0] / (len(axes) + 1), geometry)

    def predict(self, gray: np.ndarray) -> tuple[Prediction, float]:
        """HxW uint8 → (Prediction, milliseconds spent)."""
        start = time.perf_counter()
        prediction = postprocess(self.probability(gray), self.settings.postprocess)
        return prediction, (time.perf_counter() - start) * 1000.0
