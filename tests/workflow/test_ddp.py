"""DDP through the Hydra entry point: 2 CPU processes over gloo, one model written by rank 0."""

from __future__ import annotations

import json

import pytest

from tests.workflow.conftest import FAST, run, tool_env, train_cmd

pytestmark = pytest.mark.slow


def test_ddp_on_two_cpu_processes_writes_one_model(tmp_path, synthetic_dataset) -> None:
    dataset_dir, manifest = synthetic_dataset
    out = tmp_path / "ddp"
    result = run(
        train_cmd(
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            *FAST,
            f"paths.data_dir={dataset_dir}",
            f"paths.manifest={manifest}",
            f"hydra.run.dir={out}",
        ),
        tmp_path,
        tool_env(tmp_path),
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    assert (out / "train_ddp_process_1.log").exists(), "rank 1 ran in the same Hydra output folder"
    settings = json.loads((out / "model" / "settings.json").read_text())
    assert settings["info"]["epochs"] == 1 and 0.0 <= settings["info"]["val"]["dice"] <= 1.0
    assert (out / "model" / "weights.safetensors").stat().st_size > 0
    assert log.count("train: 1 epochs") == 1, "only rank 0 calibrates and writes the model"
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "dvclive" / "metrics.json").read_text())["val"]["dice"] >= 0.0
