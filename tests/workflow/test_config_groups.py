"""Every option of every config group composes, and trains end to end with ``debug=fast``.

The options are read from conf/ itself, so a new option is tested the day it is added. GPU options
run on the CPU (accelerator overridden: what they configure besides the device is exercised); the
Optuna search option is a sweep and only composes here (tests/workflow/test_sweeps.py runs one).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mtdefect.inference import ModelSettings
from mtdefect.train import train

CONF = Path(__file__).resolve().parents[2] / "conf"
ON_CPU = ["trainer.accelerator=cpu", "trainer.devices=1"]
COMPOSE_ONLY = {
    ("hparams_search", "optuna"): "a multirun sweep (run for real in test_sweeps.py)",
    # an in-process DDP run initialises torch.distributed in this pytest process and leaves its
    # rendezvous in os.environ; test_ddp.py runs it for real, in its own processes
    ("trainer", "ddp"): "DDP (run for real, 2 processes, in test_ddp.py)",
}


def options() -> list[tuple[str, str]]:
    return sorted(
        (group.name, option.stem)
        for group in CONF.iterdir()
        if group.is_dir()
        for option in group.glob("*.yaml")
    )


def compose_with(group: str, option: str, tmp_path: Path, dataset: tuple[Path, Path], *extra: str):
    dataset_dir, manifest = dataset
    GlobalHydra.instance().clear()
    overrides = [
        f"{group}={option}",
        *([] if group == "debug" else ["debug=fast"]),
        f"paths.data_dir={dataset_dir}",
        f"paths.manifest={manifest}",
        f"paths.model_dir={tmp_path / 'model'}",
        f"paths.checkpoint_dir={tmp_path / 'ckpt'}",
        f"paths.live_dir={tmp_path / 'live'}",
        "model.decoder_channels=[16,16,8,8,8]" if not (group == "model" and option == "fpn") else "",
        "data.module.crop_size=32",
        "data.module.num_workers=0",
        "calibration.thresholds=[0.5]",
        "calibration.min_areas=[0]",
        *extra,
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[o for o in overrides if o], return_hydra_config=group == "hparams_search"
        )


def test_every_group_has_options() -> None:
    groups = {group for group, _ in options()}
    assert {"data", "model", "trainer", "callbacks", "logger", "experiment", "debug", "paths"} <= groups


@pytest.mark.slow
@pytest.mark.parametrize("group, option", options(), ids=[f"{g}={o}" for g, o in options()])
def test_every_option_composes_and_trains(group: str, option: str, tmp_path: Path, synthetic_dataset) -> None:
    extra = ON_CPU if group in ("trainer", "experiment") else []
    if (group, option) == ("trainer", "ddp"):
        extra = [*extra, "trainer.sync_batchnorm=false"]
    cfg = compose_with(group, option, tmp_path, synthetic_dataset, *extra)
    if (group, option) == ("hparams_search", "optuna"):
        assert cfg.hydra.sweeper.params, COMPOSE_ONLY[(group, option)]
    if (group, option) == ("trainer", "ddp"):
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is False
    if (group, option) in COMPOSE_ONLY:
        return
    result = train(cfg)
    assert 0.0 <= result["val/dice"] <= 1.0 and "val/class_accuracy" in result
    settings = ModelSettings.load(tmp_path / "model")
    assert settings.net["arch"] == cfg.model.arch and settings.net["encoder"] == cfg.model.encoder
