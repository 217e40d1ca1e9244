"""The model runtime in-process: loads the stored model on both backends, proves it with a warm-up,
and stays unready (one log line, no exception) when the model is missing or damaged."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mtdefect import store
from mtdefect.inference import Predictor, decode_image
from mtdefect.inference.settings import BACKEND_CALIBRATION_FILE, ONNX_FILE, SETTINGS_FILE, WEIGHTS_FILE
from mtdefect.serving.config import ServeConfig
from mtdefect.serving.runtime import ModelRuntime, ModelUnavailable

from .svc_support import encode, tile

pytestmark = pytest.mark.usefixtures("use_model_home")

LOGGER = "bentoml.serve.mtdefect"


def load(tag: str, backend: str = "auto") -> ModelRuntime:
    return ModelRuntime(ServeConfig(model_tag=tag, backend=backend)).load()


@pytest.mark.parametrize("backend, name", [("auto", "onnx"), ("onnx", "onnx"), ("torch", "torch-cpu")])
def test_loads_and_answers_like_the_predictor(model_home, backend, name):
    runtime = load(model_home.tag, backend)
    assert runtime.ready and runtime.problem is None
    assert runtime.tag == model_home.tag and runtime.predictor.backend == name
    gray = decode_image(encode(tile(103, 222, seed=3)))
    expected = Predictor.from_dir(store.model_path(model_home.tag), backend=backend).predict(gray)[0]
    got, ms = runtime.predict(gray)
    assert np.array_equal(got.mask, expected.mask) and got.score == pytest.approx(expected.score)
    assert ms > 0 and got.mask.shape == (103, 222)


def test_latest_resolves_to_the_stored_version(model_home):
    runtime = load("magnetic-tile-segmenter:latest")
    assert runtime.ready and runtime.tag == model_home.tag


def damage(model_dir, how: str) -> None:
    if how == "settings_garbage":
        (model_dir / SETTINGS_FILE).write_text("{not json")
    elif how == "settings_wrong_net":
        settings = json.loads((model_dir / SETTINGS_FILE).read_text())
        settings["net"]["decoder_channels"] = [64, 32, 16, 8, 4]
        (model_dir / SETTINGS_FILE).write_text(json.dumps(settings))
        (model_dir / ONNX_FILE).unlink()
    elif how == "weights_truncated":
        data = (model_dir / WEIGHTS_FILE).read_bytes()
        (model_dir / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
        (model_dir / ONNX_FILE).unlink()
    elif how == "onnx_garbage":
        (model_dir / ONNX_FILE).write_bytes(b"\x08\x01garbage" * 100)
    elif how == "weights_nan":
        state = load_file(str(model_dir / WEIGHTS_FILE))
        state = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()
        }
        save_file(state, str(model_dir / WEIGHTS_FILE))
        (model_dir / ONNX_FILE).unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    "how", ["settings_garbage", "settings_wrong_net", "weights_truncated", "onnx_garbage", "weights_nan"]
)
def test_a_damaged_model_leaves_the_service_unready_with_one_log_line(
    model_home, copy_model_dir, caplog, how
):
    model_dir = copy_model_dir(how)
    damage(model_dir, how)
    # Stored without store.save_model_dir's own check (it would refuse the garbage settings file).
    with bentoml.models.create(f"damaged-{how.replace('_', '-')}", module="tests") as entry:
        for file in model_dir.iterdir():
            shutil.copy2(file, Path(entry.path) / file.name)
        tag = str(entry.tag)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = load(tag)
    assert not runtime.ready and runtime.predictor is None
    assert runtime.problem == f"model {tag} could not be loaded (see server log)"
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    message = lines[0].getMessage()
    assert message.startswith(f"NOT READY: model {tag} unavailable: ") and "\n" not in message
    with pytest.raises(ModelUnavailable):
        runtime.predict(np.zeros((16, 16), np.uint8))


def test_a_missing_model_leaves_the_service_unready(model_home, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = load("nope:latest")
    assert not runtime.ready
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.ERROR]


def test_an_invalid_backend_for_the_model_leaves_the_service_unready(model_home, copy_model_dir):
    from mtdefect.store import save_model_dir

    model_dir = copy_model_dir("no-onnx")
    (model_dir / ONNX_FILE).unlink()
    tag = save_model_dir(model_dir, name="no-onnx")
    assert not load(tag, "onnx").ready
    assert load(tag, "auto").predictor.backend == "torch-cpu"


def test_test_time_flips_run_the_same_on_both_backends(copy_model_dir):
    """A model saved with flips: ONNX Runtime takes the batch of views (dynamic batch axis) and agrees
    with PyTorch; the flips really change the answer of this (not flip-symmetric) tiny model."""
    model_dir = copy_model_dir("flips")
    settings = json.loads((model_dir / SETTINGS_FILE).read_text())
    gray = decode_image(encode(tile(97, 150, seed=5)))
    plain = Predictor.from_dir(model_dir, backend="onnx").probability(gray)
    settings["test_time_flips"] = ["vertical", "horizontal"]
    (model_dir / SETTINGS_FILE).write_text(json.dumps(settings))
    onnx = Predictor.from_dir(model_dir, backend="onnx").probability(gray)
    eager = Predictor.from_dir(model_dir, backend="torch").probability(gray)
    np.testing.assert_allclose(onnx, eager, rtol=0, atol=1e-4)
    assert np.abs(onnx - plain).max() > 1e-3


def test_the_store_carries_each_backends_calibration_into_the_served_settings(model_home, copy_model_dir):
    """The export stage's backend_postprocess.json travels through the store: the service loads the
    thresholds chosen for its backend, not the FP32 ones of settings.json (a store entry without it
    served INT8 at FP32's decision and tile thresholds)."""
    model_dir = copy_model_dir("calibrated")
    base = json.loads((model_dir / SETTINGS_FILE).read_text())["postprocess"]
    tile = {"views_decision_threshold": 0.0314}
    calibration = {"onnx": tile, "torch": tile}
    (model_dir / BACKEND_CALIBRATION_FILE).write_text(json.dumps(calibration))
    tag = store.save_model_dir(model_dir, name="calibrated")
    stored = store.model_path(tag)
    assert json.loads((stored / BACKEND_CALIBRATION_FILE).read_text()) == calibration
    served = load(tag, "onnx").predictor.settings.postprocess
    assert served.views_decision_threshold == 0.0314
    assert served.decision_threshold == base["decision_threshold"]
