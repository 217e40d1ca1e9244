"""Start, wait for and stop a ``bentoml serve`` subprocess: development tools for the tests and the
benchmarks; the service never imports this module.

The server runs in its own session (process group), so that stopping it stops its workers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests

BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def alive(self) -> bool:
        return self.process.poll() is None


P = TypeVar("P", bound=ServerProcess)


def launch(
    service: str,
    env: dict[str, str],
    log_path: Path,
    cwd: Path,
    host: str = "127.0.0.1",
    *,
    cls: type[P] = ServerProcess,
    bentoml: Sequence[str] = (BENTOML,),
) -> P:
    """``bentoml serve SERVICE`` on a free port of ``host``, output to ``log_path``; does not wait.
    ``SERVICE``: ``module:Class`` in ``cwd``, or a built bento's tag. ``cls``: a subclass of
    ServerProcess to return (its extra fields need defaults). ``bentoml``: the command that runs
    BentoML's CLI (e.g. ``[python, "-m", "bentoml"]`` for another interpreter)."""
    port = free_port(host)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [*bentoml, "serve", service, "--host", host, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: teardown kills the workers too
        )
    return cls(url=f"http://{host}:{port}", process=process, log_path=log_path)


def wait_ready(
    server: ServerProcess, path: str = "/readyz", timeout: float = 180.0, interval: float = 0.25
) -> None:
    """Poll ``GET path`` until it answers 200. RuntimeError if the server exits first, TimeoutError
    after ``timeout`` seconds (both with the end of the log); the server is left running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(interval)
    raise TimeoutError(f"{server.url}{path} not 200 after {timeout:.0f} s:\n{server.log_tail()}")


def stop(server: ServerProcess, grace_s: float = 20.0) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after ``grace_s``."""
    if server.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=5)
