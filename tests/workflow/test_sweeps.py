"""Hydra sweeps through the real entry point (`python -m mtdefect.train -m ...`) on synthetic tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.workflow.conftest import FAST, run, tool_env, train_cmd

pytestmark = pytest.mark.slow


def data_overrides(dataset: tuple[Path, Path]) -> list[str]:
    dataset_dir, manifest = dataset
    return [f"paths.data_dir={dataset_dir}", f"paths.manifest={manifest}"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )


def test_multirun_grid_writes_one_model_per_point(tmp_path, synthetic_dataset) -> None:
    sweep_dir = tmp_path / "multirun"
    result = run(
        train_cmd(
            "-m",
            "model.lr=1e-3,3e-4",
            *FAST,
            *data_overrides(synthetic_dataset),
            f"hydra.sweep.dir={sweep_dir}",
        ),
        tmp_path,
        tool_env(tmp_path),
    )
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1"], result.stdout[-2000:]
    lrs = []
    for job in jobs:
        assert (job / "model" / "weights.safetensors").stat().st_size > 0
        settings = json.loads((job / "model" / "settings.json").read_text())
        assert settings["info"]["val"]["objective"] >= 0
        assert (job / "dvclive" / "metrics.json").exists(), "each point logs its own curves"
        assert not (job / "checkpoints").exists(), "a finished run leaves no checkpoints behind"
        lrs.append(yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["model"]["lr"])
    assert lrs == [1e-3, 3e-4]
    assert not (tmp_path / "models").exists() and not (tmp_path / "dvclive").exists(), (
        "sweep points must write only into their own Hydra folders"
    )


def test_optuna_sweep_maximises_the_returned_validation_metric(tmp_path, synthetic_dataset) -> None:
    sweep_dir = tmp_path / "optuna"
    run(
        train_cmd(
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            *FAST,
            *data_overrides(synthetic_dataset),
            f"hydra.sweep.dir={sweep_dir}",
        ),
        tmp_path,
        tool_env(tmp_path),
    )
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {"model.lr", "model.loss.dice", "data.module.defect_fraction"}
    # the value each trial returned to the sweeper is the calibrated validation objective saved with its model
    objectives = [
        json.loads((job / "model" / "settings.json").read_text())["info"]["val"]["objective"]
        for job in job_dirs(sweep_dir)
    ]
    assert len(objectives) == 2
    assert results["best_value"] == pytest.approx(max(objectives))
    assert 0.0 <= results["best_value"] <= 1.0 + 1e-9
