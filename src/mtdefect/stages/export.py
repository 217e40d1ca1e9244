"""Stage: model folder → ONNX (dynamic H/W) + parity report against PyTorch on real test images."""

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from mtdefect.data.split import read_manifest
from mtdefect.export import check_parity, export_onnx
from mtdefect.inference import decode_image
from mtdefect.inference.settings import ONNX_FILE
from mtdefect.scoring import UNLIMITED
from mtdefect.stages._common import run


def stage(cfg: DictConfig) -> None:
    model_dir, out_dir = Path(cfg.paths.model_dir), Path(cfg.paths.onnx_dir)
    work = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(model_dir, work)
    export_onnx(work, cfg.export.opset)
    records = read_manifest(cfg.paths.manifest, "test")[: cfg.export.parity_images]
    images = [decode_image((Path(cfg.paths.data_dir) / r.image).read_bytes(), UNLIMITED) for r in records]
    report = check_parity(work, images, cfg.export.tolerance)
    (work / "parity.json").write_text(json.dumps(report, indent=2))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (ONNX_FILE, "parity.json"):
        (work / name).replace(out_dir / name)
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"export: {out_dir / ONNX_FILE}; max |Δp| {report['max_abs_prob_delta']:.2e} over "
        f"{report['images']} images, {report['mask_mismatches']} mask mismatches"
    )


if __name__ == "__main__":
    run(stage, "export")
