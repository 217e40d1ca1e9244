"""Helpers for the reliability tests: a throw-away DVC project, subprocesses with bounded waits,
file hashes, and a loopback S3 server (moto) for the DVC remote.

Nothing here touches the network beyond 127.0.0.1, and every wait has a deadline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mtdefect.devtools.server import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")

# The smallest pipeline that still runs every stage of dvc.yaml with the real code paths.
TINY = (
    "debug=fast",
    "model.decoder_channels=[32,16,16,8,8]",
    "data.module.crop_size=32",
    "data.module.samples_per_epoch=8",
    "evaluate.overlays=2",
    "evaluate.worst=1",
    "export.parity_images=2",
)


def sha256_path(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """relative posix path → sha256 of every file under ``root`` (or of ``root`` itself if a file)."""
    root = Path(root)
    if root.is_file():
        return {root.name: sha256_path(root)}
    return {p.relative_to(root).as_posix(): sha256_path(p) for p in sorted(root.rglob("*")) if p.is_file()}


def child_env(**extra: str) -> dict[str, str]:
    """Environment for pipeline subprocesses: the venv first on PATH, one BLAS/OpenMP thread (on a
    shared 2-core box, multi-threaded OpenMP spin-waits make a tiny CPU step 10-50x slower; results
    are identical run to run either way), no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        DVC_NO_ANALYTICS="1",
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(key, None)
    env.update(extra)
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    output: str
    seconds: float

    def check(self) -> Result:
        assert self.returncode == 0, f"{' '.join(self.args)} exited {self.returncode}:\n{self.output[-6000:]}"
        return self


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> Result:
    start = time.perf_counter()
    proc = subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    return Result(args, proc.returncode, proc.stdout, time.perf_counter() - start)


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("-S", o)]


def write_big_archive(path: Path, pairs_per_class: int = 60, size: tuple[int, int] = (240, 320)) -> Path:
    """A stored (uncompressed) archive of many identical, realistic-size pairs: cheap to build,
    slow enough to unpack (decode + re-encode per pair) that a kill lands mid-write."""
    from tests.conftest import CLASSES, TOP

    rng = np.random.default_rng(0)
    h, w = size
    image = np.clip(rng.normal(140, 20, (h, w)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3 : h // 2, w // 3 : w // 2] = 255
    jpg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(jpg, format="JPEG", quality=90)
    Image.fromarray(mask).save(png, format="PNG")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for cls in CLASSES:
            for i in range(pairs_per_class):
                zf.writestr(f"{TOP}/{cls}/Imgs/big_{i}.jpg", jpg.getvalue())
                zf.writestr(f"{TOP}/{cls}/Imgs/big_{i}.png", png.getvalue())
    return path


def make_dvc_project(repo: Path) -> Path:
    """A fresh git + DVC project: the real dvc.yaml, conf/, .dvc/config and a snapshot of src/."""
    from tests.integration.dvc_repo import make_repo

    if repo.exists():
        raise FileExistsError(repo)
    return make_repo(repo)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=60)
    return done.stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def dvc_status(repo: Path, env: dict[str, str]) -> dict:
    result = run([DVC, "status", "--json"], repo, env, timeout=120).check()
    return json.loads(result.output.strip().splitlines()[-1] or "{}")


def wait_for(
    predicate, timeout: float, interval: float = 0.05, alive: subprocess.Popen | None = None
) -> bool:
    """Poll ``predicate`` until true (→ True) or the deadline / the process exits (→ False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and alive.poll() is not None:
            return bool(predicate())
        time.sleep(interval)
    return False


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL the process group started for ``proc`` (the stage and all its children), reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait(timeout=30)


@contextmanager
def moto_s3(log: Path) -> Iterator[str]:
    """A standalone moto S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        started = wait_for(up, timeout=60, interval=0.1, alive=proc)
        assert started, f"moto server did not start:\n{log.read_text()}"
        yield endpoint
    finally:
        kill_group(proc)
