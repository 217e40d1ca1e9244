"""Stage: model folder + ONNX export → a new version in the BentoML model store."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from mtdefect.data.split import manifest_digest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference.settings import ONNX_FILE
from mtdefect.stages._common import run
from mtdefect.store import save_model_dir

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
        tag = save_model_dir(
            bundle,
            name=cfg.package.name,
            labels={
                "encoder": str(cfg.model.encoder),
                "arch": str(cfg.model.arch),
                "data_version": data_version[:12],
                "git_commit": git_commit()[:12],
            },
            metadata={"test_metrics": metrics, "data_version": data_version, "git_commit": git_commit()},
        )
    out = Path(cfg.paths.reports_dir) / "package.json"
    write_json_atomic(out, {"tag": tag, "data_version": data_version}, indent=2)
    print(f"package: saved {tag} to the BentoML model store")


if __name__ == "__main__":
    run(stage, "package")
