"""Which INT8 variant keeps the served decisions (issue #22): each variant quantized from the trained
model's ``model.onnx``, scored on the validation split through the service's path, compared with
FP32 (the export stage's parity: Dice within 0.005, same decision on >= 99.5 % of tiles, AUROC
within 0.002), and timed against FP32 on the 270 x 324 tile (calls interleaved).

    python benchmarks/bench_int8_variants.py [--variants base,head,tail] [--calibration 48]

Variants (``--variants``, comma-separated names of VARIANTS): which layers stay in float
(``float_prefixes``), how many training tiles calibrate, the format. For each variant it also reports
the decision with a threshold calibrated on that backend's own validation scores (the same rule as
training: the lowest threshold keeping false alarms on validation MT_Free tiles within the budget)
— what ``ModelSettings.backend_postprocess`` would carry. Needs the trained model (models/segmenter +
models/onnx) and the data (data/tiles, data/split.csv). Writes benchmarks/results/int8_variants.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402
from mtdefect.inference.predictor import onnx_runner  # noqa: E402
from mtdefect.inference.settings import ONNX_FILE, ModelSettings  # noqa: E402

HEAD = ["/head/", "/segmentation_head/"]
VARIANTS = {
    "base": {"float_prefixes": []},
    "head": {"float_prefixes": HEAD},
    "head_dec4": {"float_prefixes": [*HEAD, "/decoder/blocks.4/"]},
    "head_dec34": {"float_prefixes": [*HEAD, "/decoder/blocks.3/", "/decoder/blocks.4/"]},
    "tail": {"float_prefixes": [*HEAD, "/decoder/blocks.4/", "/encoder/model/blocks.6/"]},
    "tail56": {
        "float_prefixes": [
            *HEAD,
            "/decoder/blocks.4/",
            "/encoder/model/blocks.5/",
            "/encoder/model/blocks.6/",
        ]
    },
    "head_cal144": {"float_prefixes": HEAD, "calibration": 144},
    # the encoder (and so the tile head, which decides) in float, the decoder in INT8: the decoder
    # does most of the arithmetic (3x3 convolutions at up to full resolution)
    "encoder_float": {"float_prefixes": [*HEAD, "/encoder/"]},
    "encoder_float_cal144": {"float_prefixes": [*HEAD, "/encoder/"], "calibration": 144},
    # ... and the first decoder block, the other reader of the deepest features: in QDQ a tensor
    # quantized for one reader is quantized for all, so the tile head read quantized features
    "encoder_dec0_float": {"float_prefixes": [*HEAD, "/encoder/", "/decoder/blocks.0/"]},
    "encoder_dec01_float": {
        "float_prefixes": [*HEAD, "/encoder/", "/decoder/blocks.0/", "/decoder/blocks.1/"]
    },
    # the whole network in INT8 but activation ranges from the 99.999th percentile (outliers clipped)
    "head_percentile": {"float_prefixes": HEAD, "calibrate_method": "Percentile"},
    # only the high-resolution start of the encoder (stem, blocks 0-2) and the decoder in INT8
    "encoder_early": {
        "float_prefixes": [*HEAD, *(f"/encoder/model/blocks.{i}/" for i in range(3, 7)), "/decoder/blocks.0/"]
    },
    # depthwise convolutions: few weights per channel, wide ranges between channels, little compute
    "dw": {"float_prefixes": [*HEAD, "*/conv_dw/*"]},
    "dw_cal144": {"float_prefixes": [*HEAD, "*/conv_dw/*"], "calibration": 144},
    "dw_tail56": {
        "float_prefixes": [*HEAD, "*/conv_dw/*", "/encoder/model/blocks.5/", "/encoder/model/blocks.6/"]
    },
    "head_dec4_cal144": {"float_prefixes": [*HEAD, "/decoder/blocks.4/"], "calibration": 144},
}


def main(argv: list[str] | None = None) -> int:
    from mtdefect.calibrate import budget_threshold
    from mtdefect.data.split import read_manifest
    from mtdefect.inference.quantize import paired_speedup, parity_report, quantize_onnx
    from mtdefect.scoring import UNLIMITED, score_split, split_metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="head,tail56,encoder_early,encoder_float")
    parser.add_argument("--calibration", type=int, default=48, help="training tiles (default of export)")
    parser.add_argument("--format", default="qdq")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--max-false-alarm-rate", type=float, default=0.01)
    parser.add_argument("--result-name", default="int8_variants")
    parser.add_argument("--model-dir", help="a model folder with model.onnx (default: the trained one)")
    parser.add_argument("--val-limit", type=int, default=0, help="first N validation tiles (smoke runs)")
    args = parser.parse_args(argv)

    info = C.machine_info()
    work = C.workdir("int8")
    model = work / "model"
    model.mkdir()
    source = Path(args.model_dir) if args.model_dir else C.REPO / "models" / "segmenter"
    onnx_source = source if args.model_dir else C.REPO / "models" / "onnx"
    for name in ("settings.json", "weights.safetensors"):
        shutil.copy2(source / name, model / name)
    if (onnx_source / ONNX_FILE).exists():
        shutil.copy2(onnx_source / ONNX_FILE, model / ONNX_FILE)
    else:  # the export stage has not run yet: the same export here
        from mtdefect.export import export_onnx

        export_onnx(model)
    settings = ModelSettings.load(model)
    post = settings.postprocess
    data = C.REPO / "data" / "tiles"
    manifest = C.REPO / "data" / "split.csv"
    val = read_manifest(manifest, "val")
    val = val[: args.val_limit] if args.val_limit else val
    train = read_manifest(manifest, "train")

    from mtdefect.inference import decode_image
    from mtdefect.inference.quantize import calibration_batches

    def evenly(records, n):
        idx = np.linspace(0, len(records) - 1, min(n, len(records))).round().astype(int)
        return [records[i] for i in idx]

    fixed = C.fixed_tile()
    fp32 = Predictor.from_dir(model, backend="onnx")
    items32 = list(score_split(fp32, data, val))
    res32 = split_metrics(items32, post, per_image=True)
    dec32 = [row["defective"] for row in res32.pop("per_image")]
    labels = np.array([it.record.class_name != post.free_class for it in items32])
    from mtdefect.inference.postprocess import tile_score

    scores32 = np.array([tile_score(it.probability, post, it.class_scores) for it in items32])
    print(
        f"FP32 val: dice {res32['dice']:.4f} auroc {res32['detection']['auroc']:.4f} "
        f"recall {res32['detection']['recall']:.3f} FA {res32['detection']['false_alarm_rate']:.3f}"
    )
    rows = {}
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        n_cal = int(spec.get("calibration", args.calibration))
        images = [decode_image((data / r.image).read_bytes(), UNLIMITED) for r in evenly(train, n_cal)]
        path = work / f"{name}.onnx"
        t0 = time.perf_counter()
        quantize_onnx(
            model / ONNX_FILE,
            path,
            calibration_batches(settings, images),
            spec.get("format", args.format),
            per_channel=True,
            float_prefixes=spec["float_prefixes"],
            calibrate_method=spec.get("calibrate_method", "MinMax"),
        )
        quant_s = time.perf_counter() - t0
        int8 = Predictor(settings, onnx_runner(path), "onnx-int8")
        items8 = list(score_split(int8, data, val))
        res8 = split_metrics(items8, post, per_image=True)
        dec8 = [row["defective"] for row in res8.pop("per_image")]
        for r in (res8,):
            for key in ("scores", "labels", "confusion", "classification"):
                r.pop(key, None)
        parity = parity_report({**res32}, res8, dec32, dec8)
        scores8 = np.array([tile_score(it.probability, post, it.class_scores) for it in items8])
        own = budget_threshold(scores8[~labels], args.max_false_alarm_rate)
        own_dec = scores8 >= own
        max_dp = max(float(np.abs(a.probability - b.probability).max()) for a, b in zip(items32, items8))
        speed = paired_speedup(fp32.runner, int8.runner, [fp32.network_input(fixed)[0]], args.reps)
        rows[name] = {
            **spec,
            "calibration_tiles": n_cal,
            "quantize_s": quant_s,
            "parity": parity,
            "max_abs_prob_delta": max_dp,
            "score_abs_delta_max": float(np.abs(scores8 - scores32).max()),
            "own_threshold": {
                "decision_threshold": own,
                "fp32_threshold": post.decision_threshold,
                "same_decision_rate": float(np.mean(own_dec == np.asarray(dec32))),
                "recall": float(own_dec[labels].mean()),
                "false_alarm_rate": float(own_dec[~labels].mean()),
            },
            "int8_val": {k: res8[k] for k in ("dice", "mean_class_dice") if k in res8}
            | {"detection": res8["detection"]},
            "speed": speed,
        }
        print(
            f"{name}: dDice {parity['dice_delta']:.4f} dAUROC {parity['auroc_delta']:.4f} same "
            f"{parity['same_decision_rate']:.3f} ({parity['changed_decisions']} changed) holds "
            f"{parity['holds']}; own threshold same {rows[name]['own_threshold']['same_decision_rate']:.3f}; "
            f"max|dp| {max_dp:.3f}; speed-up {speed['speedup']:.2f}x "
            f"({speed['fp32_ms_p50']:.1f} -> {speed['int8_ms_p50']:.1f} ms)",
            flush=True,
        )
    (
        res32.pop("scores", None),
        res32.pop("labels", None),
        res32.pop("confusion", None),
        res32.pop("classification", None),
    )
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(model, str(source)),
            "fp32_val": res32,
            "validation_tiles": len(val),
            "variants": rows,
            "args": vars(args),
            "cpu_count": os.cpu_count(),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
