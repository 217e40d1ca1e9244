"""Stage: params.yaml → train(cfg), the same function the Hydra entry point calls.

Writes ``reports/validation.json``: the calibrated validation metrics (what experiments are chosen
by; the test split is only for reporting) and the training time.
"""

from pathlib import Path

from omegaconf import DictConfig

from mtdefect.fileio import write_json_atomic
from mtdefect.stages._common import run
from mtdefect.train import train


def stage(cfg: DictConfig) -> None:
    result = train(cfg)
    write_json_atomic(Path(cfg.paths.reports_dir) / "validation.json", result, indent=2, sort_keys=True)


if __name__ == "__main__":
    run(stage, "train")
