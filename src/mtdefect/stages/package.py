"""Stage: model folder + ONNX export → a new version in the BentoML model store."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from mtdefect.data.split import manifest_digest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference.quantize import MIN_SPEEDUP, choose_precision
from mtdefect.inference.settings import BACKEND_CALIBRATION_FILE, ONNX_FILE, ONNX_INT8_FILE
from mtdefect.stages._common import run
from mtdefect.store import SERVING_KEY, save_model_dir

# the test metrics copied into the store entry's metadata (the full report stays in reports/)
HEADLINE = (
    "dice",
    "iou",
    "dice_ungated",
    "mean_class_dice",
    "per_class_dice",
    "detection",
    "score_source",
    "decision_threshold",
    "backend",
)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def serving_choice(reports_dir: Path, int8_file_present: bool, min_speedup: float = MIN_SPEEDUP) -> dict:
    """What the service's ``auto`` backend serves, and why: INT8 when the export stage's validation
    parity holds and INT8 is ≥ ``min_speedup`` × faster (``reports/int8.json``), else FP32. The test
    parity (``reports/metrics_onnx-int8.json`` from the evaluate stage, when present) is recorded
    beside it; it reports, it does not choose (the test split never chooses anything)."""
    path = reports_dir / "int8.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    parity, speed = report.get("parity") or {}, report.get("speed") or {}
    holds, speedup = parity.get("holds"), speed.get("speedup")
    if not int8_file_present:
        holds, speedup = None, None
    precision, reason = choose_precision(holds, speedup, min_speedup)
    choice = {
        "precision": precision,
        "backend": "onnx-int8" if precision == "int8" else "onnx",
        "reason": reason,
        "int8_validation": {
            k: parity.get(k)
            for k in (
                "dice_delta",
                "auroc_delta",
                "same_decision_rate",
                "holds",
                "holds_by_decisions",
                "holds_by_own_calibration",
            )
        },
        "int8_speedup": speedup,
        "min_speedup": min_speedup,
    }
    test_path = reports_dir / "metrics_onnx-int8.json"
    if test_path.exists():
        test = json.loads(test_path.read_text()).get("test", {})
        choice["int8_test"] = test.get("parity")
    return choice


def stage(cfg: DictConfig) -> None:
    test = json.loads((Path(cfg.paths.reports_dir) / "metrics.json").read_text())["test"]
    metrics = {k: test[k] for k in HEADLINE if k in test}
    if "classification" in test:
        metrics["class_accuracy"] = test["classification"]["accuracy"]
    data_version = manifest_digest(cfg.paths.manifest)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "model"
        shutil.copytree(cfg.paths.model_dir, bundle)
        shutil.copy2(Path(cfg.paths.onnx_dir) / ONNX_FILE, bundle / ONNX_FILE)
        int8 = Path(cfg.paths.onnx_dir) / ONNX_INT8_FILE
        if int8.exists():
            shutil.copy2(int8, bundle / ONNX_INT8_FILE)
        calibration = Path(cfg.paths.onnx_dir) / BACKEND_CALIBRATION_FILE
        if calibration.exists():  # each backend's tile threshold, INT8's own decision threshold (export)
            shutil.copy2(calibration, bundle / BACKEND_CALIBRATION_FILE)
        serving = serving_choice(Path(cfg.paths.reports_dir), int8.exists())
        tag = save_model_dir(
            bundle,
            name=cfg.package.name,
            labels={
                "encoder": str(cfg.model.encoder),
                "arch": str(cfg.model.arch),
                "data_version": data_version[:12],
                "git_commit": git_commit()[:12],
                "precision": serving["precision"],
            },
            metadata={
                "test_metrics": metrics,
                "data_version": data_version,
                "git_commit": git_commit(),
                SERVING_KEY: serving,
            },
        )
    out = Path(cfg.paths.reports_dir) / "package.json"
    write_json_atomic(out, {"tag": tag, "data_version": data_version, "serving": serving}, indent=2)
    print(
        f"package: saved {tag} to the BentoML model store; serves {serving['precision']}: {serving['reason']}"
    )


if __name__ == "__main__":
    run(stage, "package")
