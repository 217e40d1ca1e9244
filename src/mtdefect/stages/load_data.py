"""Stage: data.source (URL, .zip or folder) → paths.data_dir, verified and binarised."""

from omegaconf import DictConfig

from mtdefect.data.source import load_dataset
from mtdefect.stages._common import run


def stage(cfg: DictConfig) -> None:
    summary = load_dataset(cfg.data.source, cfg.paths.data_dir, cfg.data.get("sha256"))
    classes = ", ".join(f"{k} {v}" for k, v in summary["classes"].items())
    print(f"load_data: {summary['images']} image/mask pairs ({classes}) → {cfg.paths.data_dir}")


if __name__ == "__main__":
    run(stage, "load_data")
