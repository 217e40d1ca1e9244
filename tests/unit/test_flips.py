"""Test-time flips: one batched network pass, logits flipped back and averaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtdefect.inference import ModelSettings, Predictor
from mtdefect.inference.postprocess import sigmoid

NET = {"arch": "Unet", "encoder": "resnet10t"}


def _predictor(flips: tuple[str, ...], runner) -> Predictor:
    settings = ModelSettings(net=NET, test_time_flips=flips)
    return Predictor(settings, runner, "fake")


def _tile() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 70), dtype=np.uint8)  # not a stride multiple: padding involved


@pytest.mark.parametrize("flips", [("vertical",), ("horizontal",), ("horizontal", "vertical", "both")])
def test_an_equivariant_network_gives_the_same_map(flips: tuple[str, ...]) -> None:
    """A network that commutes with flips (here: logits = input) must give exactly the unflipped
    answer, so every view was flipped back onto the right pixels."""
    batches = []

    def identity(batch: np.ndarray) -> tuple[np.ndarray, None]:
        batches.append(batch.shape)
        return batch.copy(), None

    gray = _tile()
    plain = _predictor((), identity).probability(gray)
    flipped = _predictor(flips, identity).probability(gray)
    np.testing.assert_allclose(flipped, plain, rtol=0, atol=1e-6)
    assert batches[-1][0] == len(flips) + 1  # one batched call for all views
    assert batches[0][0] == 1


def test_a_position_dependent_network_is_averaged_over_views() -> None:
    """logits = the row index (whatever the input): with the vertical flip, each row averages its own
    index and its mirror's, so the map becomes flat."""

    def rows(batch: np.ndarray) -> tuple[np.ndarray, None]:
        n, c, h, w = batch.shape
        return np.broadcast_to(np.arange(h, dtype=np.float32)[None, None, :, None], (n, c, h, w)) / h, None

    gray = _tile()
    padded_h = 64
    plain = _predictor((), rows).probability(gray)
    flat = _predictor(("vertical",), rows).probability(gray)
    np.testing.assert_allclose(plain[:, 0], sigmoid(np.arange(40, dtype=np.float32) / padded_h), atol=1e-6)
    np.testing.assert_allclose(flat, sigmoid(np.float32((padded_h - 1) / 2 / padded_h)), atol=1e-6)


def test_settings_round_trip_and_refuse_unknown_flips(tmp_path: Path) -> None:
    settings = ModelSettings(net=NET, test_time_flips=("vertical",))
    settings.save(tmp_path)
    assert ModelSettings.load(tmp_path).test_time_flips == ("vertical",)
    assert json.loads((tmp_path / "settings.json").read_text())["test_time_flips"] == ["vertical"]
    with pytest.raises(ValueError, match="test_time_flips"):
        ModelSettings(net=NET, test_time_flips=("diagonal",))
    with pytest.raises(ValueError, match="test_time_flips"):
        ModelSettings(net=NET, test_time_flips=("vertical", "vertical"))
    data = settings.to_dict() | {"test_time_flips": ["upside-down"]}
    (tmp_path / "settings.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="model settings unreadable"):
        ModelSettings.load(tmp_path)


def test_models_saved_before_flips_existed_run_without_them(tmp_path: Path) -> None:
    data = ModelSettings(net=NET).to_dict()
    data.pop("test_time_flips")
    (tmp_path / "settings.json").write_text(json.dumps(data))
    assert ModelSettings.load(tmp_path).test_time_flips == ()
