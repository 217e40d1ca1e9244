"""INT8 variant of a model's ONNX export: ONNX Runtime static quantization, calibrated on real tiles
passed through the predictor's own preprocessing (so the activation ranges are those the service sees).

    model_dir/model.onnx  →  model_dir/model.int8.onnx

Choices (each measured, see ``reports/int8.json`` and docs/PERFORMANCE.md):

- **pre-processing** with ``quant_pre_process`` (ONNX shape inference + graph optimisation): the
  exported graph has dynamic height/width, and the TF "same" padding of EfficientNet-Lite is computed
  from the input's shape at run time (Shape → Gather → Ceil → Pad). The quantizer needs every tensor's
  type and rank; pre-processing folds the constants and annotates them, and the dynamic ``height`` /
  ``width`` dimensions stay symbolic, so the INT8 model accepts any size the FP32 one does.
- **format**: QDQ (QuantizeLinear/DequantizeLinear pairs that ORT fuses into integer kernels) or
  QOperator (QLinearConv etc. written directly); both are built and the faster one is kept.
- **per-channel** weight scales (one per output channel): depthwise convolutions have few weights per
  channel and very different ranges between channels, so one scale per tensor loses them.
- **U8S8** (uint8 activations, int8 weights): the combination ORT's x86 kernels (VNNI) are made for.
- the **output layers stay in float**: the last convolution (pixel logits) and the tile head's linear
  layer. Quantizing a logit map to 256 levels would move pixels across the mask threshold and tiles
  across the decision threshold; those two layers cost almost nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtdefect.inference.settings import ONNX_FILE, ONNX_INT8_FILE, ModelSettings

FORMATS = ("qdq", "qoperator")
# The float work of this network: convolutions, their ReLU6 (Clip) / ReLU activations (folded into
# the quantized range), residual adds, and the decoder's Resize/Concat and the "same" Pad, so data
# stays in int8 between layers. The integer shape arithmetic of the TF "same" padding
# (Shape/Cast/Concat/Slice/Transpose on int64) must not be touched: the nodes that write no float
# tensor are excluded by name (left to the quantizer, it wraps those int64 tensors and writes a
# graph that is not a DAG).
OP_TYPES = ("Conv", "Add", "Clip", "Relu", "Concat", "Resize", "Pad")
# QOperator with both Clip and Pad quantized also writes a graph that is not a DAG (ORT 1.32): there,
# the padding stays in float (QLinearConv takes the dequantized, padded input re-quantized).
QOPERATOR_SKIP = ("Pad",)


class _Reader:
    """``CalibrationDataReader``: one preprocessed N×1×H×W tile per call (sizes may differ)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name, self.batches, self.index = input_name, list(batches), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {self.input_name: self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def calibration_batches(settings: ModelSettings, images: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Gray HxW uint8 tiles → network inputs (1×1×H'×W' float32), exactly as ``Predictor`` makes them
    (no test-time flips: a flipped tile has the same activation ranges)."""
    from mtdefect.inference.preprocess import preprocess

    return [np.ascontiguousarray(preprocess(gray, settings.preprocess)[0]) for gray in images]


def output_nodes(model) -> list[str]:
    """Names of the nodes that write a graph output (kept in float)."""
    outputs = {o.name for o in model.graph.output}
    return [node.name for node in model.graph.node if set(node.output) & outputs]


def shape_nodes(model) -> list[str]:
    """Names of the nodes that compute from tensor *shapes* (descendants of ``Shape`` fed only by
    shapes and constants): the TF "same" padding's pad widths, ``Ceil(H / stride)`` and so on. Some
    of them are float tensors, and a quantizer calibrated on one image size would clamp them to
    that size's range: the padding of any larger image would come out wrong (measured: correlation
    with FP32 0.04 at 270×324 after calibration at 96×128). They stay exact."""
    constants = {t.name for t in model.graph.initializer}
    derived: set[str] = set()
    names = []
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constants for i in inputs)):
            constants.update(node.output)
            continue
        if node.op_type == "Shape" or (
            inputs
            and all(i in constants or i in derived for i in inputs)
            and any(i in derived for i in inputs)
        ):
            derived.update(node.output)
            names.append(node.name)
    return names


def named(model, prefixes: Sequence[str]) -> list[str]:
    """Names of the nodes whose name starts with one of ``prefixes`` (layers kept in float on purpose,
    e.g. ``/head/``: the tile head), or matches one that contains ``*`` as a shell pattern (e.g.
    ``*/conv_dw/*``: every depthwise convolution of the encoder)."""
    plain = tuple(p for p in prefixes if "*" not in p)
    patterns = [p for p in prefixes if "*" in p]
    return [
        n.name
        for n in model.graph.node
        if (plain and n.name.startswith(plain)) or any(fnmatch.fnmatchcase(n.name, p) for p in patterns)
    ]


def non_float_nodes(model) -> list[str]:
    """Names of the nodes whose first output is not a float tensor (the padding's shape arithmetic),
    from ONNX shape inference; a node whose output type is unknown counts as non-float."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    }
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return [
        node.name
        for node in inferred.graph.node
        if node.output and types.get(node.output[0]) != onnx.TensorProto.FLOAT
    ]


def preprocess_for_quantization(source: str | Path, target: str | Path) -> Path:
    """``quant_pre_process``: shape inference + ORT graph optimisation (constant folding, Conv+BN
    fusion). ORT's *symbolic* shape inference cannot finish on this graph: the TF "same" padding
    computes its pad widths from ``Shape`` of a dynamic-size tensor (``Ceil(H / stride)`` ...), which
    it cannot express symbolically ("Incomplete symbolic shape inference"). ONNX's own shape
    inference is enough for the quantizer (every tensor gets its type and rank; H and W stay
    unknown), so on that failure the symbolic pass is skipped."""
    from onnxruntime.quantization import quant_pre_process

    leftover = Path("sym_shape_infer_temp.onnx")  # ORT's symbolic pass leaves it in the cwd when it fails
    existed = leftover.exists()
    try:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=False)
    except Exception as exc:  # noqa: BLE001 — ORT raises a bare Exception here
        if "symbolic shape" not in str(exc).lower():
            raise
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    finally:
        if not existed:
            leftover.unlink(missing_ok=True)
    return Path(target)


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    batches: Sequence[np.ndarray],
    fmt: str = "qdq",
    per_channel: bool = True,
    calibrate_method: str = "MinMax",
    op_types: Sequence[str] = OP_TYPES,
    float_prefixes: Sequence[str] = (),
) -> Path:
    """Static INT8 quantization of ``fp32_path`` into ``out_path`` calibrated on ``batches``; the
    layers of ``float_prefixes`` stay in float and read float inputs (``float_readers_read_float``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if fmt not in FORMATS:
        raise ValueError(f"quantization format must be one of {FORMATS}, got {fmt!r}")
    if not batches:
        raise ValueError("static quantization needs calibration images")
    out_path, fp32_path = Path(out_path).resolve(), Path(fp32_path).resolve()
    # ORT's quantizer writes scratch files into the current directory (external-data "<uuid>.data"
    # files of ~the model's size, a failed symbolic pass's temp model): work inside the temp folder
    with tempfile.TemporaryDirectory(prefix="mtq-") as tmp, contextlib.chdir(tmp):
        prepared = preprocess_for_quantization(fp32_path, Path(tmp) / "prepared.onnx")
        model = onnx.load(str(prepared))
        reader = type("Reader", (_Reader, CalibrationDataReader), {})(model.graph.input[0].name, batches)
        staging = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(staging),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=[op for op in op_types if fmt == "qdq" or op not in QOPERATOR_SKIP],
            nodes_to_exclude=sorted(
                set(
                    output_nodes(model)
                    + shape_nodes(model)
                    + non_float_nodes(model)
                    + named(model, float_prefixes)
                )
            ),
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            calibration_providers=["CPUExecutionProvider"],
            # no CalibMaxIntermediateOutputs: in ORT 1.32 reaching it *discards* the collected ranges
            # ("No data is collected" at a multiple of it). MinMax keeps only per-tensor min/max per
            # tile (ReduceMin/ReduceMax outputs), so memory stays small anyway
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        kept_float = set(named(model, float_prefixes))
        if kept_float and fmt == "qdq":
            quantized = onnx.load(str(staging))
            if float_readers_read_float(quantized, kept_float, model):
                onnx.save(quantized, str(staging))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out_path))
    return out_path


def float_readers_read_float(model, names: set[str], original) -> int:
    """Rewire the nodes ``names`` (layers kept in float) to read the float tensor wherever the
    quantizer gave them its Quantize → Dequantize copy. In QDQ format the pair replaces a tensor for
    *every* reader once one reader is quantized: the encoder's skip features, which the quantized
    decoder reads, reached the float encoder's next block quantized (measured: the tile logits of an
    all-float encoder moved by up to 0.41, and 1 of 181 validation decisions changed).

    Only where the float tensor is still what ``original`` (the graph before quantization) computes:
    the quantizer drops a ReLU/Clip in front of a Quantize (the quantized range clamps instead), and
    the tensor before that Quantize then lacks the activation. Returns how many inputs were rewired."""
    before = {out: node.op_type for node in original.graph.node for out in node.output}
    producer = {out: node for node in model.graph.node for out in node.output}
    rewired = 0
    for node in model.graph.node:
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            source = producer.get(q.input[0])
            if source is not None and before.get(q.input[0]) == source.op_type:
                node.input[i] = q.input[0]
                rewired += 1
    return rewired


@dataclass
class Candidate:
    fmt: str
    per_channel: bool
    path: Path
    ms: float = float("nan")  # median network time on the timing inputs
    max_abs_prob_delta: float = float("nan")  # vs FP32, on the timing inputs

    @property
    def name(self) -> str:
        return f"{self.fmt}{'-per-channel' if self.per_channel else ''}"


def _median_ms(runner, batches: Sequence[np.ndarray], reps: int) -> float:
    times = []
    for _ in range(reps):
        for batch in batches:
            start = time.perf_counter()
            runner(batch)
            times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def quantize_model_dir(
    model_dir: str | Path,
    calibration_images: Sequence[np.ndarray],
    timing_images: Sequence[np.ndarray] = (),
    formats: Sequence[str] = FORMATS,
    per_channel: Sequence[bool] = (True,),
    reps: int = 5,
    threads: int | None = None,
    float_prefixes: Sequence[str] = (),
) -> tuple[Path, list[dict]]:
    """Build every (format, per-channel) candidate from ``model_dir/model.onnx``, time each on
    ``timing_images`` (through the same ORT session settings the predictor uses) and keep the fastest
    as ``model_dir/model.int8.onnx``. Returns its path and one row per candidate (name, ms, max
    |Δ probability| against FP32 on the timing images); with one candidate nothing is timed."""
    from mtdefect.inference.predictor import onnx_runner

    model_dir = Path(model_dir)
    settings = ModelSettings.load(model_dir)
    batches = calibration_batches(settings, calibration_images)
    timing = calibration_batches(settings, timing_images) if timing_images else batches[:2]
    candidates = []
    with tempfile.TemporaryDirectory(prefix="mtq-candidates-") as tmp:
        for fmt in formats:
            for pc in per_channel:
                candidate = Candidate(fmt, bool(pc), Path(tmp) / f"{fmt}-{int(bool(pc))}.onnx")
                quantize_onnx(
                    model_dir / ONNX_FILE,
                    candidate.path,
                    batches,
                    fmt,
                    bool(pc),
                    float_prefixes=float_prefixes,
                )
                candidates.append(candidate)
        if len(candidates) > 1:
            fp32 = onnx_runner(model_dir / ONNX_FILE, threads)
            references = [fp32(b)[0] for b in timing]
            for candidate in candidates:
                runner = onnx_runner(candidate.path, threads)
                candidate.max_abs_prob_delta = max(
                    float(np.abs(_sigmoid(runner(b)[0]) - _sigmoid(r)).max())
                    for b, r in zip(timing, references)
                )
                candidate.ms = _median_ms(runner, timing, reps)
        best = min(candidates, key=lambda c: np.nan_to_num(c.ms, nan=0.0))
        target = model_dir / ONNX_INT8_FILE
        shutil.copy2(best.path, target)
    rows = [
        {
            "name": c.name,
            "format": c.fmt,
            "per_channel": c.per_channel,
            "network_ms_p50": c.ms,
            "max_abs_prob_delta": c.max_abs_prob_delta,
            "chosen": c is best,
        }
        for c in candidates
    ]
    return target, rows


# ---------------------------------------------------------------- parity and the precision choice

# INT8 must keep what the service answers (issue #14): pooled Dice within 0.005 of FP32, the same tile
# decision on at least 99.5 % of tiles, detection AUROC within 0.002 (or, issue #22, its own calibration's
# quality within the QUALITY margins); and it must pay. The speed gate only has to tell "faster" from
# "not faster" (INT8 can lose to FP32 on CPUs without VNNI/AVX512-BF16): the answers are guarded by the
# parity criteria, not by the speed-up. Issue #14's 1.6x was a target for the quantizer, and a gate at
# 1.6x turned INT8 off on a measured 1.55x (session 7) while it kept every answer; 1.25x is clear of the
# paired measurement's noise (±0.1x between runs of the same model).
PARITY = {"max_dice_delta": 0.005, "min_same_decision_rate": 0.995, "max_auroc_delta": 0.002}
MIN_SPEEDUP = 1.25


def parity_report(
    fp32: dict,
    int8: dict,
    fp32_decisions: Sequence[bool],
    int8_decisions: Sequence[bool],
    criteria: dict | None = None,
) -> dict:
    """Compare two ``scoring.split_metrics`` results (and the per-tile decisions behind them)."""
    criteria = {**PARITY, **(criteria or {})}
    if len(fp32_decisions) != len(int8_decisions) or not len(fp32_decisions):
        raise ValueError("parity needs the same, non-empty list of tiles for both precisions")
    same = float(np.mean(np.asarray(fp32_decisions, bool) == np.asarray(int8_decisions, bool)))
    dice_delta = abs(float(int8["dice"]) - float(fp32["dice"]))
    auroc_delta = abs(float(int8["detection"]["auroc"]) - float(fp32["detection"]["auroc"]))
    checks = {
        "dice": bool(np.nan_to_num(dice_delta, nan=0.0) <= criteria["max_dice_delta"]),
        "same_decision": bool(same >= criteria["min_same_decision_rate"]),
        "auroc": bool(np.nan_to_num(auroc_delta, nan=0.0) <= criteria["max_auroc_delta"]),
    }
    return {
        "tiles": len(fp32_decisions),
        "dice_delta": dice_delta,
        "auroc_delta": auroc_delta,
        "same_decision_rate": same,
        "changed_decisions": int(round((1 - same) * len(fp32_decisions))),
        "criteria": criteria,
        "checks": checks,
        "holds": all(checks.values()),
    }


# ... or, each backend calibrated on its own validation scores (``backend_postprocess``), INT8's
# quality must not fall short of FP32's by more than the same margins (issue #22): a quantized
# network's scores differ slightly in the tail where the decision threshold sits, so the threshold is
# chosen on the scores of the backend that serves, and what is held to the margins is what the line
# gets (Dice, AUROC, recall at the false-alarm budget), not the agreement of two thresholds.
QUALITY = {"max_dice_loss": 0.005, "max_auroc_loss": 0.002, "max_recall_loss": 0.005}


def quality_report(fp32: dict, int8: dict, max_false_alarm_rate: float, criteria: dict | None = None) -> dict:
    """INT8 at its own calibration against FP32 at its own (two ``scoring.split_metrics`` results):
    non-inferiority within ``QUALITY``'s margins, and INT8's false alarms within the budget."""
    criteria = {**QUALITY, **(criteria or {})}

    def loss(key: str, section: str | None = None) -> float:
        a, b = (fp32[section] if section else fp32)[key], (int8[section] if section else int8)[key]
        return float(np.nan_to_num(float(a) - float(b), nan=0.0))

    losses = {
        "dice_loss": loss("dice"),
        "auroc_loss": loss("auroc", "detection"),
        "recall_loss": loss("recall", "detection"),
    }
    false_alarms = float(int8["detection"]["false_alarm_rate"])
    checks = {
        "dice": losses["dice_loss"] <= criteria["max_dice_loss"],
        "auroc": losses["auroc_loss"] <= criteria["max_auroc_loss"],
        "recall": losses["recall_loss"] <= criteria["max_recall_loss"],
        "false_alarms": bool(false_alarms <= max_false_alarm_rate + 1e-12),
    }

    def brief(result: dict) -> dict:
        detection = result["detection"]
        return {"dice": result["dice"], **{k: detection[k] for k in ("recall", "false_alarm_rate", "auroc")}}

    return {
        **losses,
        "int8": brief(int8),
        "fp32": brief(fp32),
        "max_false_alarm_rate": max_false_alarm_rate,
        "criteria": criteria,
        "checks": {k: bool(v) for k, v in checks.items()},
        "holds": all(checks.values()),
    }


def choose_precision(
    parity_holds: bool | None, speedup: float | None, min_speedup: float = MIN_SPEEDUP
) -> tuple[str, str]:
    """``("int8" | "fp32", why)``: INT8 only when parity holds and it is at least ``min_speedup`` × faster."""
    if parity_holds is None or speedup is None:
        return "fp32", "no INT8 parity/speed report for this model"
    if not parity_holds:
        return "fp32", "INT8 changes the answers beyond the parity criteria on validation"
    if not speedup >= min_speedup:
        return "fp32", f"INT8 is only {speedup:.2f}x faster than FP32 (needs >= {min_speedup:.2f}x)"
    return (
        "int8",
        f"INT8 keeps the answers on validation and is {speedup:.2f}x faster than FP32 "
        f"(>= {min_speedup:.2f}x)",
    )


def paired_speedup(fp32_runner, int8_runner, batches: Sequence[np.ndarray], reps: int = 10) -> dict:
    """Network time of both precisions, calls interleaved (the first one alternates) so machine load
    hits both alike; the ratio is the median FP32 time over the median INT8 time."""
    import os

    for runner in (fp32_runner, int8_runner):  # warm-up
        runner(batches[0])
    fp32_ms, int8_ms = [], []
    load = [round(x, 2) for x in os.getloadavg()]
    for i in range(reps):
        for batch in batches:
            pair = [(fp32_runner, fp32_ms), (int8_runner, int8_ms)]
            for runner, sink in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                runner(batch)
                sink.append((time.perf_counter() - start) * 1000.0)
    fp32_p50, int8_p50 = float(np.median(fp32_ms)), float(np.median(int8_ms))
    return {
        "calls": len(fp32_ms),
        "fp32_ms_p50": fp32_p50,
        "int8_ms_p50": int8_p50,
        "speedup": fp32_p50 / int8_p50,
        "shapes": sorted({tuple(b.shape) for b in batches}),
        "load_average_before": load,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
