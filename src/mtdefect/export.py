"""Export a trained model folder to ONNX (dynamic height/width) and prove parity on real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtdefect.inference.postprocess import postprocess
from mtdefect.inference.predictor import Predictor, load_torch_net, onnx_runner, torch_runner
from mtdefect.inference.settings import ONNX_FILE, ModelSettings

OPSET = 18


def export_onnx(model_dir: str | Path, opset: int = OPSET) -> Path:
    """Write ``model.onnx`` next to the weights: input ``image`` N×1×H×W, output ``logits``."""
    model_dir = Path(model_dir)
    settings = ModelSettings.load(model_dir)
    net = load_torch_net(model_dir, settings, "cpu")
    stride = settings.preprocess.stride
    example = torch.zeros(1, settings.net.get("in_channels", 1), stride * 8, stride * 10)
    target = model_dir / ONNX_FILE
    tmp = target.with_suffix(".onnx.tmp")
    torch.onnx.export(
        net,
        (example,),
        str(tmp),
        input_names=["image"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
        dynamo=False,
    )
    tmp.replace(target)
    return target


def check_parity(model_dir: str | Path, images: list[np.ndarray], tolerance: float = 1e-4) -> dict:
    """Run PyTorch (CPU) and ONNX Runtime through the same Predictor path on the given images.

    Returns the largest |Δ probability| and the number of images whose masks differ; raises if
    the probabilities differ by ``tolerance`` or more or any mask differs.
    """
    model_dir = Path(model_dir)
    settings = ModelSettings.load(model_dir)
    torch_pred = Predictor(settings, torch_runner(load_torch_net(model_dir, settings, "cpu")), "torch-cpu")
    onnx_pred = Predictor(settings, onnx_runner(model_dir / ONNX_FILE), "onnx")
    max_delta, mask_mismatches = 0.0, 0
    for gray in images:
        p_torch = torch_pred.probability(gray)
        p_onnx = onnx_pred.probability(gray)
        max_delta = max(max_delta, float(np.abs(p_torch - p_onnx).max()))
        m_torch = postprocess(p_torch, settings.postprocess).mask
        m_onnx = postprocess(p_onnx, settings.postprocess).mask
        mask_mismatches += int(not np.array_equal(m_torch, m_onnx))
    report = {"images": len(images), "max_abs_prob_delta": max_delta, "mask_mismatches": mask_mismatches,
              "tolerance": tolerance}
    if max_delta >= tolerance or mask_mismatches:
        raise RuntimeError(f"ONNX parity check failed: {report}")
    return report
