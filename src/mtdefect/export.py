"""Export a trained model folder to ONNX (dynamic height/width) and prove parity on real images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mtdefect.inference.postprocess import postprocess
from mtdefect.inference.predictor import Predictor, load_torch_net, onnx_runner, torch_runner
from mtdefect.inference.settings import ONNX_FILE, ModelSettings, PostprocessSettings

OPSET = 18


def export_onnx(model_dir: str | Path, opset: int = OPSET) -> Path:
    """Write ``model.onnx`` next to the weights: input ``image`` N×1×H×W, outputs ``logits``
    (N×1×H×W) and, for a model with a tile head, ``class_logits`` (N×K): one graph, one pass."""
    model_dir = Path(model_dir)
    settings = ModelSettings.load(model_dir)
    net = load_torch_net(model_dir, settings, "cpu")
    stride = settings.preprocess.stride
    example = torch.zeros(1, settings.net.get("in_channels", 1), stride * 8, stride * 10)
    target = model_dir / ONNX_FILE
    tmp = target.with_suffix(".onnx.tmp")
    outputs = ["logits", "class_logits"] if settings.net.get("tile_classes") else ["logits"]
    axes = {
        "image": {0: "batch", 2: "height", 3: "width"},
        "logits": {0: "batch", 2: "height", 3: "width"},
        "class_logits": {0: "batch"},
    }
    torch.onnx.export(
        net,
        (example,),
        str(tmp),
        input_names=["image"],
        output_names=outputs,
        opset_version=opset,
        dynamic_axes={name: axes[name] for name in ["image", *outputs]},
        dynamo=False,
    )
    tmp.replace(target)
    return target


def check_parity(model_dir: str | Path, images: list[np.ndarray], tolerance: float = 1e-4) -> dict:
    """Run PyTorch (CPU) and ONNX Runtime through the same Predictor path on the given images.

    Returns the largest |Δ probability|, the number of images whose masks differ and the number of
    differing pixels. Raises if the probabilities differ by ``tolerance`` or more, or if a mask
    pixel differs whose probability is not within ``tolerance`` of the threshold (a pixel sitting
    on the threshold may flip on a 1e-7 difference; anything else is a real disagreement).
    """
    model_dir = Path(model_dir)
    settings = ModelSettings.load(model_dir)
    torch_pred = Predictor(settings, torch_runner(load_torch_net(model_dir, settings, "cpu")), "torch-cpu")
    onnx_pred = Predictor(settings, onnx_runner(model_dir / ONNX_FILE), "onnx")
    max_delta, class_delta, mask_mismatches, pixels, unexplained = 0.0, 0.0, 0, 0, 0
    threshold = settings.postprocess.threshold
    for gray in images:
        p_torch, c_torch = torch_pred.infer(gray)
        p_onnx, c_onnx = onnx_pred.infer(gray)
        max_delta = max(max_delta, float(np.abs(p_torch - p_onnx).max()))
        if set(c_torch) != set(c_onnx):
            raise RuntimeError(
                f"ONNX parity check failed: class outputs {sorted(c_onnx)} vs {sorted(c_torch)}"
            )
        class_delta = max([class_delta] + [abs(c_torch[k] - c_onnx[k]) for k in c_torch])
        differ = (
            postprocess(p_torch, settings.postprocess, c_torch).mask
            != postprocess(p_onnx, settings.postprocess, c_onnx).mask
        )
        mask_mismatches += int(differ.any())
        pixels += int(differ.sum())
        unexplained += int((differ & (np.abs(p_torch - threshold) >= tolerance)).sum())
    report = {
        "images": len(images),
        "max_abs_prob_delta": max_delta,
        "max_abs_class_prob_delta": class_delta,
        "mask_mismatches": mask_mismatches,
        "mismatched_pixels": pixels,
        "mismatched_pixels_off_threshold": unexplained,
        "tolerance": tolerance,
    }
    if max_delta >= tolerance or class_delta >= tolerance or unexplained:
        raise RuntimeError(f"ONNX parity check failed: {report}")
    return report


def own_decision_threshold(items: list, settings: PostprocessSettings, max_false_alarm_rate: float) -> float:
    """The tile decision threshold of ``settings``' score source chosen on ``items`` (one backend's
    scored validation tiles) for the false-alarm budget: calibration's own rule."""
    from mtdefect.calibrate import budget_threshold
    from mtdefect.inference.postprocess import tile_score

    free = [
        tile_score(item.probability, settings, item.class_scores)
        for item in items
        if item.record.class_name == settings.free_class
    ]
    return budget_threshold(free, max_false_alarm_rate)


def views_calibration(
    items: list, settings: PostprocessSettings, max_false_alarm_rate: float, group_gap: int | None
) -> dict:
    """One backend's multi-view tile threshold on its scored validation tiles
    (``calibrate.choose_views_threshold``) and the tile-level numbers at it."""
    from mtdefect.calibrate import choose_views_threshold

    return choose_views_threshold(items, settings, max_false_alarm_rate, group_gap)[1]


def check_int8(
    model_dir: str | Path,
    dataset_dir: str | Path,
    records: list,
    timing_images: list[np.ndarray],
    criteria: dict | None = None,
    reps: int = 20,
    max_false_alarm_rate: float | None = None,
    group_gap: int | None = None,
) -> dict:
    """FP32 (``model.onnx``) against INT8 (``model.int8.onnx``) of one model folder on ``records``
    (the validation split), through the service's path and ``scoring.split_metrics``: the headline
    numbers of both, their parity, the paired speed-up of the network on ``timing_images`` (test-time
    flips included, as the service runs them) and the precision the numbers choose
    (``quantize.choose_precision``).

    Parity holds either way of issue #22: INT8 takes the same decisions at FP32's threshold
    (``quantize.parity_report``), or — with ``max_false_alarm_rate`` given — INT8 calibrated on its own
    validation scores (its decision threshold for the same budget, ``backend_postprocess``) loses no
    more quality than the margins allow (``quantize.quality_report``). The report's
    ``backend_postprocess`` is that calibration, for the export stage to ship beside the INT8 file.
    With ``max_false_alarm_rate`` given, ``views`` holds each backend's multi-view tile threshold
    (``views_calibration``) from the same scored tiles."""
    from mtdefect.inference.quantize import choose_precision, paired_speedup, parity_report, quality_report
    from mtdefect.scoring import score_split, split_metrics

    def headline(items: list, post: PostprocessSettings) -> tuple[dict, list[bool]]:
        result = split_metrics(items, post, per_image=True)
        decided = [row["defective"] for row in result.pop("per_image")]
        for key in ("scores", "labels", "confusion", "classification"):
            result.pop(key, None)
        return result, decided

    model_dir = Path(model_dir)
    fp32 = Predictor.from_dir(model_dir, backend="onnx")
    int8 = Predictor.from_dir(model_dir, backend="onnx-int8")
    post = fp32.settings.postprocess
    items = {name: list(score_split(p, dataset_dir, records)) for name, p in (("fp32", fp32), ("int8", int8))}
    results, decisions = {}, {}
    for name in items:
        results[name], decisions[name] = headline(items[name], post)
    parity = parity_report(results["fp32"], results["int8"], decisions["fp32"], decisions["int8"], criteria)
    own = None
    if max_false_alarm_rate is not None and post.decision_threshold is not None:
        threshold = own_decision_threshold(items["int8"], post, max_false_alarm_rate)
        own_result, own_decisions = headline(items["int8"], replace(post, decision_threshold=threshold))
        quality = quality_report(results["fp32"], own_result, max_false_alarm_rate)
        own = {
            "backend_postprocess": {"onnx-int8": {"decision_threshold": threshold}},
            "int8": own_result,
            "same_decision_rate": float(np.mean(np.array(own_decisions) == np.array(decisions["fp32"]))),
            "quality": quality,
        }
        parity = {
            **parity,
            "holds_by_decisions": parity["holds"],
            "holds_by_own_calibration": quality["holds"],
            "holds": bool(parity["holds"] or quality["holds"]),
        }
    views = None
    if max_false_alarm_rate is not None:
        views = {
            backend: views_calibration(items[name], post, max_false_alarm_rate, group_gap)
            for backend, name in (("onnx", "fp32"), ("onnx-int8", "int8"))
        }
    speed = paired_speedup(fp32.runner, int8.runner, [fp32.network_input(g)[0] for g in timing_images], reps)
    precision, reason = choose_precision(parity["holds"], speed["speedup"])
    if own is not None and not parity["holds_by_decisions"] and precision == "int8":
        reason += " (calibrated on its own validation scores: backend_postprocess)"
    return {
        "split_tiles": len(records),
        "fp32": results["fp32"],
        "int8": results["int8"],
        "parity": parity,
        "own_calibration": own,
        "views": views,
        "speed": speed,
        "test_time_flips": list(fp32.settings.test_time_flips),
        "recommended_precision": precision,
        "reason": reason,
    }
