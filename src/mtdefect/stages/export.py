"""Stage: model folder → ONNX (dynamic H/W) + parity report against PyTorch on real test images;
then the static INT8 variant (calibrated on training tiles) and its parity and speed against FP32 on
the validation split (``reports/int8.json``)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mtdefect.data.split import read_manifest
from mtdefect.export import check_int8, check_parity, export_onnx
from mtdefect.fileio import write_json_atomic
from mtdefect.inference import ModelSettings
from mtdefect.inference.preprocess import resize_image
from mtdefect.inference.settings import BACKEND_CALIBRATION_FILE, ONNX_FILE, ONNX_INT8_FILE
from mtdefect.scoring import read_image
from mtdefect.stages._common import run

# what export.int8 means when params.yaml predates it
INT8_DEFAULTS = {
    "enabled": True,
    "calibration_split": "train",
    "calibration_images": 48,
    "formats": ["qdq", "qoperator"],
    "per_channel": [True],
    "parity_split": "val",
    "timing_size": [270, 324],  # width x height: the typical tile of issue #14
    "speed_reps": 30,
    "calibration_size": None,  # [width, height]: calibration tiles resized to it; None: native sizes
    "float_prefixes": [],  # ONNX node-name prefixes kept in float (e.g. "/decoder/blocks.4/")
}
INT8_REPORT = "int8.json"


def int8_params(cfg: DictConfig) -> dict:
    given = cfg.export.get("int8")
    return {**INT8_DEFAULTS, **(OmegaConf.to_container(given, resolve=True) if given is not None else {})}


def evenly(records: list, n: int) -> list:
    """``n`` records spread over the (class-sorted) list, so every class is represented."""
    if n >= len(records):
        return records
    return [records[i] for i in np.linspace(0, len(records) - 1, n).round().astype(int)]


def read_images(data_dir: Path, records: list) -> list[np.ndarray]:
    return [read_image(data_dir, r.image) for r in records]


def export_int8(cfg: DictConfig, work: Path) -> dict:
    """model.int8.onnx in ``work`` + the report (validation parity, speed, candidates, choice)."""
    from mtdefect.inference.quantize import quantize_model_dir

    p = int8_params(cfg)
    data_dir = Path(cfg.paths.data_dir)
    calibration = read_images(
        data_dir,
        evenly(read_manifest(cfg.paths.manifest, p["calibration_split"]), int(p["calibration_images"])),
    )
    if p["calibration_size"]:
        cal_width, cal_height = (int(v) for v in p["calibration_size"])
        calibration = [resize_image(g, (cal_height, cal_width)) for g in calibration]
    parity_records = read_manifest(cfg.paths.manifest, p["parity_split"])
    width, height = (int(v) for v in p["timing_size"])
    tile = resize_image(read_images(data_dir, parity_records[:1])[0], (height, width))
    load_before = [round(x, 2) for x in os.getloadavg()]
    _, candidates = quantize_model_dir(
        work,
        calibration,
        [tile],
        formats=p["formats"],
        per_channel=[bool(v) for v in p["per_channel"]],
        float_prefixes=list(p["float_prefixes"]),
    )
    report = check_int8(
        work,
        data_dir,
        parity_records,
        [tile],
        reps=int(p["speed_reps"]),
        max_false_alarm_rate=float(cfg.calibration.max_false_alarm_rate),
        group_gap=cfg.data.split.get("group_gap"),
    )
    settings = ModelSettings.load(work)
    return {
        "model": {
            "source": str(cfg.paths.model_dir),
            "net": settings.net,
            "test_time_flips": list(settings.test_time_flips),
        },
        "split": p["parity_split"],
        "calibration": {
            "split": p["calibration_split"],
            "images": len(calibration),
            "size": p["calibration_size"],
            "float_prefixes": list(p["float_prefixes"]),
        },
        "candidates": candidates,
        **report,
        "timing_size_wh": [width, height],
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "cpu_count": os.cpu_count(),
    }


def fp32_views(cfg: DictConfig, work: Path) -> dict:
    """FP32's multi-view tile threshold on the validation split (when no INT8 report scored it)."""
    from mtdefect.export import views_calibration
    from mtdefect.inference import Predictor
    from mtdefect.scoring import score_split

    predictor = Predictor.from_dir(work, backend="onnx")
    records = read_manifest(cfg.paths.manifest, int8_params(cfg)["parity_split"])
    items = list(score_split(predictor, Path(cfg.paths.data_dir), records))
    return views_calibration(
        items,
        predictor.settings.postprocess,
        float(cfg.calibration.max_false_alarm_rate),
        cfg.data.split.get("group_gap"),
    )


def backend_calibration(int8: dict | None, views: dict) -> dict:
    """``backend_postprocess.json``: each backend's multi-view tile threshold (FP32's serves the
    PyTorch backend too: the same network within 1e-4), and INT8's own decision threshold when INT8
    passes on its own calibration only (``export.check_int8``)."""
    fp32 = {"views_decision_threshold": views["onnx"]["views_decision_threshold"]}
    calibration = {"onnx": fp32, "torch": dict(fp32)}
    if int8 is not None:
        fields = {"views_decision_threshold": views["onnx-int8"]["views_decision_threshold"]}
        parity, own = int8["parity"], int8.get("own_calibration")
        if own and not parity.get("holds_by_decisions", True) and parity.get("holds_by_own_calibration"):
            fields = {**own["backend_postprocess"]["onnx-int8"], **fields}
        calibration["onnx-int8"] = fields
    return calibration


def stage(cfg: DictConfig) -> None:
    model_dir, out_dir = Path(cfg.paths.model_dir), Path(cfg.paths.onnx_dir)
    work = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(model_dir, work)
    export_onnx(work, cfg.export.opset)
    records = read_manifest(cfg.paths.manifest, "test")[: cfg.export.parity_images]
    images = read_images(Path(cfg.paths.data_dir), records)
    report = check_parity(work, images, cfg.export.tolerance)
    (work / "parity.json").write_text(json.dumps(report, indent=2))
    names = [ONNX_FILE, "parity.json"]
    int8 = None
    if int8_params(cfg)["enabled"]:
        int8 = export_int8(cfg, work)
        names.append(ONNX_INT8_FILE)
    views = int8["views"] if int8 else {"onnx": fp32_views(cfg, work)}
    write_json_atomic(work / BACKEND_CALIBRATION_FILE, backend_calibration(int8, views), indent=2)
    names.append(BACKEND_CALIBRATION_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ONNX_INT8_FILE, BACKEND_CALIBRATION_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    for name in names:
        (work / name).replace(out_dir / name)
    shutil.rmtree(work, ignore_errors=True)
    reports = Path(cfg.paths.reports_dir)
    write_json_atomic(
        reports / INT8_REPORT,
        int8
        or {
            "enabled": False,
            "recommended_precision": "fp32",
            "reason": "export.int8.enabled is false",
            "views": views,
        },
        indent=2,
    )
    tiles = views["onnx"]
    print(
        f"export: multi-view tile threshold {tiles['views_decision_threshold']:.4f} ({tiles['fusion']} of "
        f"{tiles['views_per_tile']} views; validation: {tiles['tiles']} tiles, recall {tiles['recall']:.3f} "
        f"at {tiles['false_alarm_rate']:.3f} false alarms)"
    )
    print(
        f"export: {out_dir / ONNX_FILE}; max |Δp| {report['max_abs_prob_delta']:.2e} over "
        f"{report['images']} images, {report['mask_mismatches']} mask mismatches"
    )
    if int8:
        par, speed = int8["parity"], int8["speed"]
        print(
            f"export: {out_dir / ONNX_INT8_FILE} "
            f"({next(c['name'] for c in int8['candidates'] if c['chosen'])}); "
            f"{int8['split']}: Δdice {par['dice_delta']:.4f} ΔAUROC {par['auroc_delta']:.4f} same decision "
            f"{par['same_decision_rate']:.3%}"
            + (
                f", own calibration holds: {par['holds_by_own_calibration']}"
                if "holds_by_own_calibration" in par
                else ""
            )
            + f"; {speed['speedup']:.2f}x faster "
            f"({speed['fp32_ms_p50']:.1f} → {speed['int8_ms_p50']:.1f} ms) → {int8['recommended_precision']}"
        )


if __name__ == "__main__":
    run(stage, "export")
