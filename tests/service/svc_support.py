"""Helpers shared by the service tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from mtdefect.devtools import server as devserver

REPO = Path(__file__).resolve().parents[2]
BENTOML = devserver.BENTOML
API_KEY = "test-key-0123456789"
CLASS_NAMES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
# the tiny model's tile-class head: its outputs in order (MT_Free = no defect)
TILE_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven")
START_TIMEOUT_S = 90.0


# ---------------------------------------------------------------- synthetic images


def tile(height: int, width: int, seed: int = 0, blobs: int = 2) -> np.ndarray:
    """A gray tile with bright round blobs (what the tiny model learns to call defects)."""
    rng = np.random.default_rng(seed)
    gray = np.clip(rng.normal(110, 8, (height, width)), 0, 255)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(blobs):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = max(2, min(height, width) // 8)
        gray[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 235
    return gray.astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.stack([gray, (gray * 0.9).astype(np.uint8), gray], axis=-1)


# ---------------------------------------------------------------- the tiny model


def net_config() -> dict:
    """A small U-Net on a timm encoder, in whichever key style build_net currently takes."""
    from mtdefect.inference.network import build_net

    common = {"arch": "Unet", "decoder_channels": [32, 16, 16, 8, 8], "in_channels": 1, "classes": 1}
    if "tile_classes" in inspect.signature(build_net).parameters:
        return {**common, "encoder": "lcnet_035", "tile_classes": len(TILE_CLASSES)}
    if "encoder" in inspect.signature(build_net).parameters:
        return {**common, "encoder": "lcnet_035", "pretrained": False}
    return {**common, "encoder_name": "tu-lcnet_035", "encoder_weights": None}


def train_tiny_model(out_dir: Path, steps: int = 25, seed: int = 0) -> Path:
    """A few optimizer steps on bright-blob images with the project's loss, written as a model folder
    (settings.json + weights.safetensors) with an ONNX export next to it. Its tile head learns
    "blobs → MT_Blowhole, none → MT_Free"; the decision stays the mask's (defective exactly when a
    region exists), so the tests can reason about regions."""
    import torch

    from mtdefect.export import export_onnx
    from mtdefect.inference.network import build_net
    from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings
    from mtdefect.model.bundle import write_model_dir
    from mtdefect.model.losses import CombinedLoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = net_config()
    net = build_net(**config)
    loss_fn = CombinedLoss(bce=1.0, dice=1.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    preprocess = PreprocessSettings()
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than 2 threads when the cores are shared
    try:
        for _ in range(steps):
            images = [
                tile(64, 64, seed=int(rng.integers(1 << 30)), blobs=int(rng.integers(0, 3))) for _ in range(8)
            ]
            x = np.stack(
                [(im.astype(np.float32) / 255.0 - preprocess.mean) / preprocess.std for im in images]
            )
            y = np.stack([(im > 200).astype(np.float32) for im in images])
            labels = torch.tensor([TILE_CLASSES.index("MT_Blowhole" if m.any() else "MT_Free") for m in y])
            optimizer.zero_grad()
            output = net(torch.from_numpy(x[:, None]))
            logits, tile_logits = output if isinstance(output, tuple) else (output, None)
            loss = loss_fn(logits, torch.from_numpy(y[:, None]))
            if tile_logits is not None:
                loss = loss + torch.nn.functional.cross_entropy(tile_logits, labels)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    settings = ModelSettings(
        net=config,
        preprocess=preprocess,
        # window 1 + decision 0.5: defective exactly when a pixel reaches 0.5, i.e. when a region exists
        postprocess=PostprocessSettings(
            threshold=0.5, min_region_area=0, score_window=1, decision_threshold=0.5
        ),
        class_names=TILE_CLASSES if config.get("tile_classes") else CLASS_NAMES,
        info={"purpose": "service tests"},
    )
    write_model_dir(net, settings, out_dir)
    export_onnx(out_dir)
    return out_dir


@dataclass
class ModelHome:
    home: Path  # BENTOML_HOME
    tag: str
    model_dir: Path  # the folder that was stored

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
        env.update(BENTOML_HOME=str(self.home), BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
        return env


@contextlib.contextmanager
def bentoml_home_at(home: Path):
    """Point this process's BentoML home and model store at ``home`` for a while (BentoML caches
    both as singletons, so setting BENTOML_HOME alone would not be enough once BentoML was used)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    for sub in ("bentos", "models", "envs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        with (
            BentoMLContainer.bentoml_home.patch(str(home)),
            BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))),
        ):
            yield
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


# ---------------------------------------------------------------- servers


SERVICE = "service:MagneticTileService"


@dataclass
class Server(devserver.ServerProcess):
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post_image(self, path: str, data: bytes, filename: str = "tile.png", **kw) -> requests.Response:
        return self.post(path, files={"image": (filename, data, "application/octet-stream")}, **kw)


def start_server(env: dict[str, str], log_path: Path) -> Server:
    """The service on a free loopback port; not yet ready (see wait_until)."""
    server = devserver.launch(SERVICE, env, log_path, cwd=REPO, cls=Server)
    server.env = env
    return server


def wait_until(server: Server, path: str, timeout: float = START_TIMEOUT_S) -> None:
    devserver.wait_ready(server, path, timeout=timeout)


def stop_server(server: Server) -> None:
    devserver.stop(server, grace_s=15.0)


def raw_connect(server: Server, timeout: float = 15.0) -> socket.socket:
    host, port = server.url.rsplit("//", 1)[1].split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), body


@contextlib.contextmanager
def running_server(model_home: ModelHome, log_path: Path, ready_path: str = "/readyz", **mt_env: str):
    env = model_home.env()
    env.update({k: str(v) for k, v in mt_env.items()})
    server = start_server(env, log_path)
    try:
        wait_until(server, ready_path)
        yield server
    finally:
        stop_server(server)


STRICT = {
    "MT_API_KEY": API_KEY,
    "MT_MAX_BYTES": "60000",
    "MT_MAX_PIXELS": "90000",  # e.g. 300x300
    "MT_MAX_CONCURRENCY": "2",
    "MT_TIMEOUT_S": "3",
    "MT_BACKEND": "torch",
}
