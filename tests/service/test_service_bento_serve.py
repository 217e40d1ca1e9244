"""The built bento, served: `bentoml build`, then `bentoml serve <bento tag>` (what the container runs)
in an interpreter that cannot see the development install of mtdefect. The service can then only
import the code the bento's `include` list packed, so a module missing from it fails the start or
the request: /readyz must answer 200 and /detect on a synthetic tile must answer 200; the operator
page, files the service reads at request time, must be there too."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mtdefect.devtools import server as devserver

from .logcheck import assert_clean_log_since
from .svc_support import BENTOML, REPO, START_TIMEOUT_S, Server, encode, tile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bento_tag(model_home) -> str:
    """`bentoml build` of bentofile.yaml into the test BentoML home (which holds the tiny model)."""
    out = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=REPO,
        env=model_home.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    assert name == "magnetic-tile-service" and (model_home.home / "bentos" / name / version).is_dir()
    return tag


@pytest.fixture(scope="module")
def python_without_dev_install(tmp_path_factory) -> Path:
    """A bare venv whose one site entry points at this environment's site-packages through a .pth
    line: the third-party packages import, but the .pth files inside that folder (the editable
    install of mtdefect among them) are not processed, so `import mtdefect` finds nothing."""
    venv = tmp_path_factory.mktemp("no-dev-install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    Path(site, "parent-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, bentoml; print(u.find_spec('mtdefect'))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=venv,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip().splitlines()[-1] == "None", "the development install is still visible"
    return python


def test_the_built_bento_serves_readyz_and_detect(
    bento_tag, python_without_dev_install, model_home, tmp_path
):
    env = model_home.env()
    env["PATH"] = f"{python_without_dev_install.parent}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    server = devserver.launch(
        bento_tag,
        env,
        tmp_path / "bento-serve.log",
        cwd=tmp_path,
        cls=Server,
        bentoml=[str(python_without_dev_install), "-m", "bentoml"],
    )
    try:
        devserver.wait_ready(server, "/readyz", timeout=2 * START_TIMEOUT_S)
        assert server.get("/readyz", timeout=10).status_code == 200
        response = server.post_image("/detect", encode(tile(96, 80, seed=5, blobs=2)))
        assert response.status_code == 200, (response.status_code, response.text[:500], server.log_tail())
        body = response.json()
        assert isinstance(body["defective"], bool) and 0 <= body["defect_area_fraction"] <= 1
        assert body["model"] == model_home.tag, "the bento's own copy of the stored model answered"
        # files the service reads at request time travel too (the operator page and its script)
        for path, media in (("/", "text/html"), ("/ui/app.js", "text/javascript")):
            page = server.get(path, timeout=10)
            assert page.status_code == 200 and page.headers["content-type"].startswith(media), (
                path,
                page.text[:200],
            )
        assert_clean_log_since(server, 0, ["/detect"])
    finally:
        devserver.stop(server)
