"""A BentoML server under test and a bounded loopback load generator (threads + requests).

The server runs in its own process group so that stopping it also stops its workers; its resident
memory is summed over the whole process tree (the ``bentoml serve`` arbiter and every worker).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _common as C  # puts src/ on sys.path
import psutil
import requests

from mtdefect.devtools import server as devserver

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- model store


def store_model(model_dir: Path, home: Path) -> str:
    """Save the model folder into a fresh BentoML home (in a child process: BentoML caches its home)."""
    for sub in ("bentos", "models", "envs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    code = (
        "import sys; sys.path.insert(0, 'src'); from mtdefect.store import save_model_dir; "
        f"print(save_model_dir({str(model_dir)!r}, labels={{'purpose': 'benchmark'}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=C.REPO, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- server


@dataclass
class Server(devserver.ServerProcess):
    def tree_rss(self) -> dict:
        """Resident memory of the server's process tree: total and per process (MiB)."""
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {"total_mib": float("nan"), "processes": []}
        rows = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(p.cmdline())
                role = (
                    "worker"
                    if "--worker-id" in cmd or "serve-http" in cmd or "worker" in cmd
                    else "arbiter"
                    if p.pid == root.pid
                    else p.name()
                )
                rows.append({"pid": p.pid, "role": role, "rss_mib": p.memory_info().rss / 2**20})
        return {"total_mib": sum(r["rss_mib"] for r in rows), "processes": rows}


def start_server(
    service: str,
    home: Path,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    cwd: Path = C.REPO,
    timeout: float = 180.0,
) -> Server:
    """``bentoml serve`` on a free loopback port with its own BentoML home; returns once /readyz is 200."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(C.REPO / "src"), str(C.REPO), env.get("PYTHONPATH")])
    )
    env.update(extra_env or {})
    server = devserver.launch(service, env, log_path, cwd=cwd, host=LOOPBACK, cls=Server)
    try:
        devserver.wait_ready(server, "/readyz", timeout=timeout, interval=0.5)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    devserver.stop(server, grace_s=20.0)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Body:
    """A multipart/form-data body with one ``image`` file, encoded once (keeps the client cheap)."""

    data: bytes
    content_type: str

    @classmethod
    def image(cls, payload: bytes, filename: str = "tile.jpg", field_name: str = "image") -> Body:
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        return cls(
            head + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
        )


@dataclass
class LoadResult:
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # X-Inference-Ms: model time inside the server
    batch_sizes: list[int] = field(default_factory=list)  # X-Batch-Size (batched_service.py only)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def req_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else float("nan")

    def summary(self) -> dict:
        lat = C.latency_summary(self.latencies_ms)
        return {
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.error_count,
            "error_kinds": dict(self.errors),
            "wall_s": self.wall_s,
            "req_per_s": self.req_per_s,
            **lat,
            "server_inference_p50_ms": C.percentile(self.server_ms, 50),
            "client_cpu_s": self.client_cpu_s,
            "mean_batch_size": (sum(self.batch_sizes) / len(self.batch_sizes)) if self.batch_sizes else None,
            "max_batch_size": max(self.batch_sizes) if self.batch_sizes else None,
        }


def generate_load(
    url: str,
    bodies: Sequence[Body],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 60.0,
) -> LoadResult:
    """Closed loop: ``concurrency`` threads, each with its own keep-alive connection, send the bodies
    round-robin until ``max_requests`` were sent or ``max_seconds`` passed. Loopback only."""
    host = url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host not in (LOOPBACK, "localhost"):
        raise ValueError(f"refusing to load anything but loopback, got {host}")
    result = LoadResult(concurrency)
    lock = threading.Lock()
    state = {"next": 0}
    deadline = time.monotonic() + max_seconds

    def take() -> int | None:
        with lock:
            if state["next"] >= max_requests or time.monotonic() >= deadline:
                return None
            state["next"] += 1
            return state["next"] - 1

    def worker() -> None:
        session = requests.Session()
        try:
            while (i := take()) is not None:
                body = bodies[i % len(bodies)]
                start = time.perf_counter()
                try:
                    r = session.post(
                        url, data=body.data, headers={"Content-Type": body.content_type}, timeout=timeout_s
                    )
                    ms = (time.perf_counter() - start) * 1000.0
                    kind = None if r.status_code == 200 else f"http {r.status_code}"
                    server_ms = r.headers.get("X-Inference-Ms")
                    batch = r.headers.get("X-Batch-Size")
                except requests.RequestException as exc:
                    kind, ms, server_ms, batch = type(exc).__name__, 0.0, None, None
                with lock:
                    if kind is None:
                        result.latencies_ms.append(ms)
                        if server_ms:
                            result.server_ms.append(float(server_ms))
                        if batch:
                            result.batch_sizes.append(int(batch))
                    else:
                        result.errors[kind] = result.errors.get(kind, 0) + 1
        finally:
            session.close()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - t0
    result.client_cpu_s = time.process_time() - cpu0
    return result
