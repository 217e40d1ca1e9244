"""What every stage shares: reading params.yaml and turning expected failures into one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> DictConfig:
    """params.yaml as composed by `dvc exp run` (already resolved; no Hydra runtime involved)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run from the repository root (dvc exp run composes it)")
    return OmegaConf.load(path)


def run(stage: Callable[[DictConfig], object], name: str) -> None:
    """Run a stage; known failures (bad data, missing files, bad values) exit 1 with one line."""
    from mtdefect.data.source import DataSourceError

    try:
        stage(load_params())
    except (DataSourceError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no output was accepted", file=sys.stderr)
        sys.exit(130)
