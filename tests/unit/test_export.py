"""ONNX export: one graph gives the mask logits and the tile-class logits, equal to PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtdefect.export import check_parity, export_onnx
from mtdefect.inference import Predictor
from mtdefect.inference.network import build_net
from mtdefect.model.bundle import write_model_dir
from tests.conftest import CLASSES, head_model


def gray(seed: int, shape=(70, 90)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net_cfg, settings = head_model(per_image=False)
    out = tmp_path_factory.mktemp("head") / "model"
    write_model_dir(build_net(**net_cfg).eval(), settings, out)
    export_onnx(out)
    return out


def test_one_onnx_pass_gives_mask_and_class_scores_equal_to_pytorch(model_dir: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "class_logits"]
    report = check_parity(model_dir, [gray(i) for i in range(3)], tolerance=1e-4)
    assert report["max_abs_class_prob_delta"] < 1e-4 and report["mask_mismatches"] == 0
    onnx_answer = Predictor.from_dir(model_dir, backend="onnx").predict(gray(7))[0]
    torch_answer = Predictor.from_dir(model_dir, backend="torch").predict(gray(7))[0]
    assert (
        onnx_answer.defective == torch_answer.defective
        and onnx_answer.defect_class == torch_answer.defect_class
    )
    assert onnx_answer.score == pytest.approx(torch_answer.score, abs=1e-5)
    assert set(onnx_answer.class_scores) == set(CLASSES)


def test_flipped_views_average_the_class_logits_too(model_dir: Path) -> None:
    predictor = Predictor.from_dir(model_dir, backend="onnx").with_flips(["vertical"])
    image = gray(3)
    batch, _ = predictor.network_input(image)
    _, tile_logits = predictor.runner(batch)
    assert tile_logits.shape == (2, len(CLASSES))
    expected = np.exp(tile_logits.mean(0) - tile_logits.mean(0).max())
    expected /= expected.sum()
    scores = predictor.infer(image)[1]
    assert [scores[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-6)
