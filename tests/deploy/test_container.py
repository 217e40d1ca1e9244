"""The containerized bento, deployed as a user deploys it: `make container`'s build (base image without a
registry, `bentoml build`, `bentoml containerize`), the image run read-only as its non-root user on a
loopback port, real tiles posted over HTTP and the answers compared with the in-process Predictor.

Needs a container engine (podman/buildah from Debian's packages, or docker with its daemon) and, unless
MT_BASE_IMAGE names a base image, root and debootstrap. Skips and says why when they are missing; in CI
(MT_REQUIRE_DEPLOY_TEST=1, which `.ci/run` sets after installing them, or CI=true) it fails instead.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
import zipfile

import numpy as np
import pytest
import requests
from PIL import Image

from mtdefect.devtools import container
from mtdefect.devtools.server import free_port
from mtdefect.inference import Predictor, decode_image
from tests.conftest import SHARED_ZIP

pytestmark = [pytest.mark.slow, pytest.mark.dataset]

IN_CI = os.environ.get("MT_REQUIRE_DEPLOY_TEST") == "1" or os.environ.get("CI", "").lower() == "true"
TILES_PER_CLASS = 2  # 6 classes: 12 real tiles
READY_TIMEOUT_S = 180.0


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the deploy test must run in CI, but {reason}")
    pytest.skip(reason)


def real_tiles() -> list[tuple[str, bytes]]:
    """The first TILES_PER_CLASS images of each class folder of the shared archive (sorted names)."""
    by_class: dict[str, list[str]] = {}
    with zipfile.ZipFile(SHARED_ZIP) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if name.endswith(".jpg") and len(parts) >= 3 and parts[-2] == "Imgs":
                by_class.setdefault(parts[-3], []).append(name)
        picked = [n for names in by_class.values() for n in names[:TILES_PER_CLASS]]
        return [(name.rsplit("/", 1)[1], zf.read(name)) for name in picked]


@pytest.fixture(scope="module")
def engine() -> container.Engine:
    if not SHARED_ZIP.exists():
        unavailable(f"the shared dataset is missing at {SHARED_ZIP}")
    try:
        found = container.find_engine()
    except RuntimeError as exc:
        unavailable(f"no container engine ({exc})")
    if not os.environ.get("MT_BASE_IMAGE") and not found.exists(container.OS_IMAGE):
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            unavailable("building the base image needs root and debootstrap (or set MT_BASE_IMAGE)")
    return found


@pytest.fixture(scope="module")
def image(engine, model_home):
    """The image, built the way `make container` builds it, from the tiny model's store; removed after."""
    env = model_home.env()
    container.ensure_base_image(engine)
    tag = container.build_bento(env)
    name = f"localhost/mtdefect-deploy-test:{tag.split(':')[1]}"
    container.containerize(engine, tag, name, env)
    yield name
    engine.run("rmi", "-f", name, check=False)


@pytest.fixture(scope="module")
def deployed(engine, image):
    """The container on a free loopback port, ready; stopped and removed after the tests."""
    port = free_port()
    name = f"mtdefect-deploy-{uuid.uuid4().hex[:8]}"
    engine.run(*container.run_args(image, port, name=name))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            state = engine.run("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
            if state != "true" or time.monotonic() > deadline:
                logs = engine.run("logs", name, check=False)
                pytest.fail(f"container not ready (running: {state}): {(logs.stdout + logs.stderr)[-4000:]}")
            time.sleep(1.0)
        yield {"url": url, "name": name}
    finally:
        engine.run("rm", "-f", name, check=False, timeout=120)
        assert engine.run("inspect", name, check=False).returncode != 0, f"container {name} not removed"


def test_the_image_serves_with_onnx_runtime_and_has_no_torch(engine, image):
    assert container.image_has(engine, image, "onnxruntime")
    for module in ("torch", "torchvision", "segmentation_models_pytorch", "lightning"):
        assert not container.image_has(engine, image, module), f"{module} is in the image"
    assert engine.size(image) <= 1.2e9


def test_the_container_runs_read_only_as_a_non_root_user(engine, deployed):
    uid = engine.run("exec", deployed["name"], "id", "-u").stdout.strip()
    assert uid != "0"
    write = engine.run("exec", deployed["name"], "touch", "/home/bentoml/bento/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert requests.get(deployed["url"] + "/livez", timeout=10).status_code == 200


def test_backend_auto_serves_onnx_without_torch(deployed, model_home):
    """MT_BACKEND=auto (the image's default) in an image without PyTorch: ONNX Runtime."""
    metrics = requests.get(deployed["url"] + "/metrics", timeout=10).text
    info = [line for line in metrics.splitlines() if line.startswith("mtdefect_model_info{")]
    assert info and all('backend="onnx"' in line for line in info), info
    assert any(f'model="{model_home.tag}"' in line for line in info), info


def test_the_container_answers_like_the_in_process_predictor(deployed, model_home):
    """Real tiles: the same decision, score, regions, class and mask as the Predictor in this process
    (the evaluate stage's path) on the same bytes."""
    predictor = Predictor.from_dir(model_home.model_dir, backend="onnx")
    tiles = real_tiles()
    assert len(tiles) >= 10
    masks = set()
    for filename, data in tiles:
        files = {"image": (filename, data, "application/octet-stream")}
        detect = requests.post(deployed["url"] + "/detect", files=files, timeout=60)
        assert detect.status_code == 200, detect.text
        segment = requests.post(deployed["url"] + "/segment", files=files, timeout=60)
        assert segment.status_code == 200, segment.text
        expected = predictor.predict(decode_image(data))[0]
        body = detect.json()
        assert body["model"] == model_home.tag
        assert body["defective"] == expected.defective, filename
        assert body["score"] == pytest.approx(expected.score, abs=1e-5), filename
        assert body["regions"] == [r.to_dict() for r in expected.regions], filename
        assert body["defect_class"] == expected.defect_class, filename
        mask = np.asarray(Image.open(io.BytesIO(segment.content)))
        assert np.array_equal(mask, expected.mask), filename
        masks.add(mask.tobytes())
    assert len(masks) == len(tiles)  # every tile its own mask: the comparison is not of constants


@pytest.mark.parametrize(
    "files, status",
    [
        ({"image": ("tile.jpg", b"not an image at all", "image/jpeg")}, 415),
        ({"other": ("tile.jpg", b"x", "image/jpeg")}, 400),
    ],
)
def test_a_bad_upload_gets_its_4xx(deployed, files, status):
    response = requests.post(deployed["url"] + "/detect", files=files, timeout=30)
    assert response.status_code == status, response.text
    assert "error" in response.json()
