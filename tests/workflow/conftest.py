"""Helpers for the experiment-workflow tests: tiny synthetic data, subprocess runners, a throwaway
DVC repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_synthetic_tree
from tests.integration.dvc_repo import make_repo

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Smallest sensible training run: same code path as a real one (debug=fast: 1 epoch of 2 tiny batches).
FAST = ["debug=fast", "trainer.limit_val_batches=3", "model.decoder_channels=[32,16,16,8,8]"]


# torch.distributed's rendezvous variables: an in-process Lightning DDP run sets them in os.environ, and a
# subprocess that inherits them joins that (finished) job instead of starting its own
DISTRIBUTED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "PL_GLOBAL_SEED",
)


def tool_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for subprocesses: this venv first on PATH, the BentoML store and git identity
    in tmp, no inherited torch.distributed rendezvous."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(
        PATH=f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}",
        BENTOML_HOME=str(tmp / "bentoml"),
        HYDRA_FULL_ERROR="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="workflow-test",
        GIT_AUTHOR_EMAIL="workflow-test@localhost",
        GIT_COMMITTER_NAME="workflow-test",
        GIT_COMMITTER_EMAIL="workflow-test@localhost",
        PYTHONWARNINGS="ignore",
        # one intra-op thread per process: on a small shared CPU box, OpenMP spin-waiting across
        # oversubscribed cores makes tiny convolutions ~10x slower (2 DDP ranks = 2 processes anyway)
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with the tail of its output."""
    try:
        result = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} timed out after {timeout}s:\n{(exc.stderr or b'')[-3000:]!r}")
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def train_cmd(*overrides: str) -> list[str]:
    return [PYTHON, "-m", "mtdefect.train", *overrides]


def make_dvc_repo(dest: Path, env: dict[str, str]) -> Path:
    """A git + DVC repo holding the project's pipeline definition and sources (deps), nothing else."""
    return make_repo(dest)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    """A synthetic archive folder (4 tiles per class), usable as MT_DATA_SOURCE (absolute path)."""
    base = tmp_path_factory.mktemp("tiny_source")
    write_synthetic_tree(base, per_class=4)
    return base.resolve()
