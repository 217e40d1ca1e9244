"""`bentoml build` packs the service, the serving code and a reference to the stored model, and the
packed code imports on its own (without the development install of mtdefect)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from .svc_support import BENTOML, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bento(model_home) -> Path:
    env = model_home.env()
    out = subprocess.run(
        check=False,
        args=[BENTOML, "build", "--output", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    assert name == "magnetic-tile-service"
    path = model_home.home / "bentos" / name / version
    assert path.is_dir(), out.stdout
    return path


def test_bento_references_the_stored_model(bento, model_home):
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == [model_home.tag]
    assert info["service"] == "service:MagneticTileService"
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert routes == {"/segment", "/detect", "/detect_tile", "/overlay"}


def test_bento_packs_serving_code_only(bento):
    files = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
    assert {
        "service.py",
        "src/mtdefect/store.py",
        "src/mtdefect/inference/predictor.py",
        "src/mtdefect/serving/upload.py",
        "src/mtdefect/inference/network.py",
    } <= files
    assert not any(f.startswith(("src/mtdefect/data/", "src/mtdefect/stages/", "tests/")) for f in files)
    assert "src/mtdefect/train.py" not in files and "src/mtdefect/model/module.py" not in files
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    for package in ("bentoml==", "onnxruntime==", "pillow==", "scipy=="):
        assert package in requirements
    # serving runs ONNX Runtime; PyTorch is the development backend and stays out of the bento
    pinned = {line.split("==")[0].lower() for line in requirements.splitlines() if "==" in line}
    assert not pinned & {"torch", "torchvision", "segmentation-models-pytorch", "timm", "safetensors"}


def test_packed_service_imports_without_the_development_install(bento, tmp_path):
    """python -S skips site-packages' .pth files, so the editable mtdefect install is invisible and
    service.py must find the package it was packed with (src/ next to it)."""
    code = (
        "import json, sys; import service, mtdefect; "
        "print(json.dumps({'mtdefect': mtdefect.__file__, "
        "'training': sorted(m for m in sys.modules if m.startswith(('lightning', 'mtdefect.data', "
        "'mtdefect.train', 'mtdefect.stages')))}))"
    )
    site = sysconfig.get_paths()["purelib"]
    env = {
        "PYTHONPATH": site,
        "BENTOML_HOME": str(tmp_path),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        check=False,
        args=[sys.executable, "-S", "-c", code],
        cwd=bento / "src",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mtdefect"].startswith(str(bento / "src" / "src" / "mtdefect"))
    assert result["training"] == []
