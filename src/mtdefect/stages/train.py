"""Stage: params.yaml → train(cfg), the same function the Hydra entry point calls."""
from omegaconf import DictConfig

from mtdefect.stages._common import run
from mtdefect.train import train


def stage(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    run(stage, "train")
