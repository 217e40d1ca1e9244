"""INT8 (ONNX Runtime static quantization): the quantized model runs on any input size, answers close
to FP32, loads as the ``onnx-int8`` backend, is scored as its own backend, and the precision the
package stage records follows the parity and speed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdefect.export import export_onnx
from mtdefect.inference import Predictor
from mtdefect.inference.network import build_net
from mtdefect.inference.quantize import (
    MIN_SPEEDUP,
    PARITY,
    calibration_batches,
    choose_precision,
    paired_speedup,
    parity_report,
    quality_report,
    quantize_model_dir,
)
from mtdefect.inference.settings import BACKEND_CALIBRATION_FILE, ONNX_INT8_FILE, ModelSettings
from mtdefect.model.bundle import write_model_dir
from tests.conftest import CLASSES, head_model


def tile(seed: int, shape=(96, 120)) -> np.ndarray:
    """A smooth tile-like image (brightness gradient, texture, one bright blob): the calibration and
    test inputs of a random-weight network should at least look like images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = 110 + 30 * xx / shape[1] + rng.normal(0, 8, shape)
    cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < 40] += 80
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The project's network family (EfficientNet-Lite0 U-Net with the tile head, TF "same" padding,
    dynamic H/W export), small decoder, random weights; both quantization formats built, the faster kept."""
    torch.manual_seed(0)
    net_cfg, settings = head_model(per_image=True)
    net = build_net(**net_cfg)
    calibration = [tile(i, shape) for i, shape in enumerate([(96, 120), (130, 70), (64, 200), (160, 160)])]
    # BatchNorm statistics estimated on tiles (weights stay random): activations then have the scale of
    # a trained network's; with the untouched initial statistics they grow layer after layer and no
    # 8-bit range fits them
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        for batch in calibration_batches(settings, [tile(20 + i, (96, 128)) for i in range(8)]):
            net(torch.from_numpy(batch))
    out = tmp_path_factory.mktemp("int8") / "model"
    write_model_dir(net.eval(), settings, out)
    export_onnx(out)
    _, rows = quantize_model_dir(out, calibration, [tile(9)], formats=("qdq", "qoperator"), reps=1)
    return out, rows


def test_both_formats_are_built_and_the_fastest_is_kept(int8_model) -> None:
    model_dir, rows = int8_model
    assert (model_dir / ONNX_INT8_FILE).exists()
    assert {r["format"] for r in rows} == {"qdq", "qoperator"} and sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["network_ms_p50"] == min(r["network_ms_p50"] for r in rows)


@pytest.mark.parametrize("shape", [(96, 120), (37, 53), (324, 270), (200, 64)])
def test_int8_runs_on_any_size_and_stays_close_to_fp32(int8_model, shape) -> None:
    model_dir, _ = int8_model
    int8 = Predictor.from_dir(model_dir, backend="onnx-int8")
    fp32 = Predictor.from_dir(model_dir, backend="onnx")
    assert int8.backend == "onnx-int8"
    gray = tile(42, shape)
    batch, _ = fp32.network_input(gray)
    logits32, class32 = fp32.runner(batch)
    logits8, class8 = int8.runner(batch)
    assert logits8.shape == logits32.shape and class8.shape == class32.shape == (1, len(CLASSES))
    # random weights: loose, but a broken graph (wrong ranges, lost padding, swapped outputs) fails it
    correlation = np.corrcoef(logits8.ravel(), logits32.ravel())[0, 1]
    assert correlation > 0.9, correlation
    spread = float(np.ptp(logits32))
    assert float(np.median(np.abs(logits8 - logits32))) < 0.1 * spread
    # the head reads global maxima of deep features: the loosest part on random weights
    assert np.abs(class8 - class32).max() < 0.75 * float(np.ptp(class32)) + 0.1
    answer, _ = int8.predict(gray)
    assert answer.mask.shape == shape and set(answer.class_scores) == set(CLASSES)
    assert 0.0 <= answer.score <= 1.0


def test_layers_kept_in_float_read_float_inputs(int8_model, tmp_path: Path) -> None:
    """The encoder and the tile head kept in float (``float_prefixes``), the decoder in INT8: the tile
    logits, which decide, are FP32's exactly. Without the rewiring the encoder read the quantized
    copies of its own skip features (the decoder reads them too) and its answer moved."""
    from mtdefect.inference.predictor import onnx_runner
    from mtdefect.inference.quantize import quantize_onnx

    model_dir, _ = int8_model
    fp32 = Predictor.from_dir(model_dir, backend="onnx")
    calibration = calibration_batches(fp32.settings, [tile(i) for i in range(4)])
    path = quantize_onnx(
        model_dir / "model.onnx",
        tmp_path / "decoder-int8.onnx",
        calibration,
        float_prefixes=["/encoder/", "/head/"],
    )
    int8 = onnx_runner(path)
    for seed, shape in ((3, (96, 120)), (4, (324, 270))):
        batch, _ = fp32.network_input(tile(seed, shape))
        logits32, class32 = fp32.runner(batch)
        logits8, class8 = int8(batch)
        np.testing.assert_allclose(class8, class32, rtol=0, atol=1e-5)
        assert not np.array_equal(logits8, logits32)  # the decoder did run in INT8
        assert np.corrcoef(logits8.ravel(), logits32.ravel())[0, 1] > 0.9  # and its activations kept


def test_a_model_folder_without_int8_still_loads_and_says_what_is_missing(tmp_path: Path, int8_model) -> None:
    model_dir, _ = int8_model
    old = tmp_path / "old"
    old.mkdir()
    for name in ("settings.json", "weights.safetensors", "model.onnx"):
        (old / name).write_bytes((model_dir / name).read_bytes())
    assert Predictor.from_dir(old).backend == "onnx"
    with pytest.raises(FileNotFoundError, match="INT8"):
        Predictor.from_dir(old, backend="onnx-int8")
    with pytest.raises(ValueError, match="onnx-int8"):
        Predictor.from_dir(old, backend="tensorrt")


def test_paired_speedup_reports_both_precisions(int8_model) -> None:
    model_dir, _ = int8_model
    fp32 = Predictor.from_dir(model_dir, backend="onnx")
    int8 = Predictor.from_dir(model_dir, backend="onnx-int8")
    speed = paired_speedup(fp32.runner, int8.runner, [fp32.network_input(tile(1))[0]], reps=2)
    assert speed["calls"] == 2 and speed["speedup"] == pytest.approx(
        speed["fp32_ms_p50"] / speed["int8_ms_p50"]
    )
    assert len(speed["load_average_before"]) == 3


# ---------------------------------------------------------------- parity and the choice (pure numbers)


def metrics(dice: float, auroc: float) -> dict:
    return {"dice": dice, "detection": {"auroc": auroc}}


def test_parity_holds_within_every_criterion() -> None:
    fp32 = [True] * 100 + [False] * 100
    report = parity_report(metrics(0.80, 0.990), metrics(0.796, 0.9885), fp32, list(fp32))
    assert report["holds"] and report["same_decision_rate"] == 1.0 and report["changed_decisions"] == 0


@pytest.mark.parametrize(
    ("int8_metrics", "changed", "failing"),
    [
        (metrics(0.794, 0.990), 0, "dice"),  # Dice 0.006 lower
        (metrics(0.80, 0.9875), 0, "auroc"),  # AUROC 0.0025 lower
        (metrics(0.80, 0.990), 2, "same_decision"),  # 2 of 200 tiles decided otherwise: 99.0 %
    ],
)
def test_parity_fails_on_any_criterion(int8_metrics, changed, failing) -> None:
    fp32 = [True] * 100 + [False] * 100
    int8 = [not d if i < changed else d for i, d in enumerate(fp32)]
    report = parity_report(metrics(0.80, 0.990), int8_metrics, fp32, int8)
    assert not report["holds"] and [k for k, ok in report["checks"].items() if not ok] == [failing]
    assert report["criteria"] == PARITY


def test_one_changed_decision_in_200_tiles_is_within_the_budget() -> None:
    fp32 = [True] * 100 + [False] * 100
    int8 = [not fp32[0]] + fp32[1:]
    assert parity_report(metrics(0.8, 0.99), metrics(0.8, 0.99), fp32, int8)["holds"]  # 99.5 %


def quality(dice: float, auroc: float, recall: float, false_alarms: float) -> dict:
    return {"dice": dice, "detection": {"auroc": auroc, "recall": recall, "false_alarm_rate": false_alarms}}


def test_own_calibration_quality_is_non_inferiority_within_the_margins() -> None:
    fp32 = quality(0.73, 0.961, 0.754, 0.008)
    better = quality(0.737, 0.965, 0.836, 0.008)  # what the default's INT8 measured on validation
    report = quality_report(fp32, better, 0.01)
    assert report["holds"] and report["dice_loss"] < 0 and report["auroc_loss"] < 0
    assert quality_report(fp32, quality(0.726, 0.9595, 0.754, 0.01), 0.01)["holds"]  # losses within
    for worse, failing in [
        (quality(0.724, 0.961, 0.754, 0.008), "dice"),  # 0.006 less Dice
        (quality(0.73, 0.9585, 0.754, 0.008), "auroc"),  # 0.0025 less AUROC
        (quality(0.73, 0.961, 0.738, 0.008), "recall"),  # one defective tile in 61 missed more
        (quality(0.73, 0.961, 0.754, 0.017), "false_alarms"),  # over the 1 % budget
    ]:
        report = quality_report(fp32, worse, 0.01)
        assert not report["holds"] and [k for k, ok in report["checks"].items() if not ok] == [failing]


def test_int8_own_calibration_is_chosen_on_its_scores_and_ships_beside_it(
    int8_model, synthetic_dataset, tmp_path: Path
) -> None:
    """check_int8 calibrates INT8's decision threshold on INT8's validation scores for the budget; the
    calibration file beside the exports is what the ``onnx-int8`` backend (only) then decides with,
    also when evaluation assembles the folder from the model and the export folders."""
    from mtdefect.data.split import read_manifest
    from mtdefect.evaluate import evaluate_backends
    from mtdefect.export import check_int8

    model_dir, _ = int8_model
    dataset_dir, manifest = synthetic_dataset
    records = read_manifest(manifest, "val")
    report = check_int8(model_dir, dataset_dir, records, [tile(3)], reps=1, max_false_alarm_rate=0.01)
    own = report["own_calibration"]
    threshold = own["backend_postprocess"]["onnx-int8"]["decision_threshold"]
    assert own["int8"]["detection"]["false_alarm_rate"] <= 0.01
    assert set(report["parity"]) >= {"holds_by_decisions", "holds_by_own_calibration", "holds"}
    assert report["parity"]["holds"] == (
        report["parity"]["holds_by_decisions"] or report["parity"]["holds_by_own_calibration"]
    )
    assert own["quality"]["checks"]["false_alarms"]

    weights_only, onnx_dir = tmp_path / "segmenter", tmp_path / "onnx"
    weights_only.mkdir()
    onnx_dir.mkdir()
    for name in ("settings.json", "weights.safetensors"):
        (weights_only / name).write_bytes((model_dir / name).read_bytes())
    for name in ("model.onnx", ONNX_INT8_FILE):
        (onnx_dir / name).write_bytes((model_dir / name).read_bytes())
    shipped = {"onnx-int8": {"decision_threshold": 0.123}}
    (onnx_dir / BACKEND_CALIBRATION_FILE).write_text(json.dumps(shipped))
    results = evaluate_backends(weights_only, onnx_dir, dataset_dir, manifest, tmp_path / "r", ["onnx-int8"])
    assert results["onnx-int8"]["decision_threshold"] == 0.123
    (onnx_dir / BACKEND_CALIBRATION_FILE).write_text(
        json.dumps({"onnx-int8": {"decision_threshold": threshold}})
    )
    for name in ("model.onnx", ONNX_INT8_FILE, BACKEND_CALIBRATION_FILE):
        (weights_only / name).write_bytes((onnx_dir / name).read_bytes())
    assert Predictor.from_dir(weights_only, "onnx-int8").settings.postprocess.decision_threshold == threshold
    assert Predictor.from_dir(weights_only, "onnx").settings.postprocess.decision_threshold == 0.5
    saved = ModelSettings.load(model_dir)
    assert saved.postprocess.decision_threshold == 0.5 and not saved.backend_postprocess


def test_a_broken_backend_calibration_file_refuses_the_model(int8_model, tmp_path: Path) -> None:
    model_dir, _ = int8_model
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "settings.json").write_bytes((model_dir / "settings.json").read_bytes())
    for bad in ("[1, 2]", '{"onnx-int8": {"no_such_field": 1}}', "{not json"):
        (folder / BACKEND_CALIBRATION_FILE).write_text(bad)
        with pytest.raises(ValueError, match=BACKEND_CALIBRATION_FILE):
            ModelSettings.load(folder)


def test_package_choice_is_int8_only_when_parity_holds_and_it_pays() -> None:
    assert choose_precision(True, 1.9)[0] == "int8"
    assert choose_precision(True, MIN_SPEEDUP)[0] == "int8"
    below = round(MIN_SPEEDUP - 0.05, 2)  # just under the gate, whatever the gate is
    precision, why = choose_precision(True, below)
    assert precision == "fp32" and f"{below:.2f}x" in why
    precision, why = choose_precision(False, 3.0)
    assert precision == "fp32" and "parity" in why
    assert choose_precision(None, None)[0] == "fp32"
    assert choose_precision(True, float("nan"))[0] == "fp32"


def test_package_stage_records_the_choice_from_the_reports(tmp_path: Path) -> None:
    from mtdefect.stages.package import serving_choice

    assert serving_choice(tmp_path, int8_file_present=True)["precision"] == "fp32"  # no report: fp32
    report = {
        "parity": {"holds": True, "dice_delta": 0.001, "auroc_delta": 0.0, "same_decision_rate": 1.0},
        "speed": {"speedup": 2.1},
    }
    (tmp_path / "int8.json").write_text(json.dumps(report))
    choice = serving_choice(tmp_path, int8_file_present=True)
    assert (choice["precision"], choice["backend"], choice["int8_speedup"]) == ("int8", "onnx-int8", 2.1)
    assert serving_choice(tmp_path, int8_file_present=False)["precision"] == "fp32"  # no file to serve
    report["parity"]["holds"] = False
    (tmp_path / "int8.json").write_text(json.dumps(report))
    assert serving_choice(tmp_path, int8_file_present=True)["backend"] == "onnx"
    (tmp_path / "metrics_onnx-int8.json").write_text(json.dumps({"test": {"parity": {"holds": True}}}))
    assert serving_choice(tmp_path, int8_file_present=True)["int8_test"] == {"holds": True}


def test_the_service_accepts_the_int8_backend() -> None:
    from mtdefect.serving.config import ServeConfig

    assert ServeConfig.from_env({"MT_BACKEND": "onnx-int8"}).backend == "onnx-int8"
    assert ServeConfig.from_env({}).backend == "auto"


def test_evaluate_scores_int8_as_its_own_backend(int8_model, synthetic_dataset, tmp_path: Path) -> None:
    from mtdefect.evaluate import evaluate_backends

    model_dir, _ = int8_model
    dataset_dir, manifest = synthetic_dataset
    weights_only, onnx_dir = tmp_path / "segmenter", tmp_path / "onnx"
    weights_only.mkdir()
    onnx_dir.mkdir()
    for name in ("settings.json", "weights.safetensors"):
        (weights_only / name).write_bytes((model_dir / name).read_bytes())
    for name in ("model.onnx", ONNX_INT8_FILE):
        (onnx_dir / name).write_bytes((model_dir / name).read_bytes())
    results = evaluate_backends(
        weights_only, onnx_dir, dataset_dir, manifest, tmp_path / "reports", ["onnx-int8"]
    )
    written = json.loads((tmp_path / "reports" / "metrics_onnx-int8.json").read_text())["test"]
    assert written["backend"] == "onnx-int8" and written["parity"]["reference"] == "onnx"
    assert written["parity"]["tiles"] == written["images"] == results["onnx-int8"]["images"] > 0
    assert 0.0 <= written["parity"]["same_decision_rate"] <= 1.0 and "detection" in written


def test_the_service_auto_backend_follows_the_recorded_choice(int8_model, monkeypatch) -> None:
    from mtdefect import store
    from mtdefect.serving.config import ServeConfig
    from mtdefect.serving.runtime import ModelRuntime

    model_dir, _ = int8_model
    monkeypatch.setattr(store, "model_path", lambda tag: model_dir)
    monkeypatch.setattr(store, "recorded_backend", lambda tag: ("onnx-int8", "INT8 kept the answers"))
    runtime = ModelRuntime(ServeConfig()).load()
    assert runtime.ready and runtime.predictor.backend == "onnx-int8"
    assert ModelRuntime(ServeConfig(backend="onnx")).load().predictor.backend == "onnx"  # explicit wins
    monkeypatch.setattr(store, "recorded_backend", lambda tag: (None, None))  # older entry: as before
    assert ModelRuntime(ServeConfig()).load().predictor.backend == "onnx"


def test_export_ships_each_backends_tile_threshold_and_int8s_own_decision_only_when_needed() -> None:
    from mtdefect.stages.export import backend_calibration

    views = {"onnx": {"views_decision_threshold": 0.81}, "onnx-int8": {"views_decision_threshold": 0.79}}
    assert backend_calibration(None, {"onnx": views["onnx"]}) == {
        "onnx": {"views_decision_threshold": 0.81},
        "torch": {"views_decision_threshold": 0.81},
    }
    own = {"backend_postprocess": {"onnx-int8": {"decision_threshold": 0.77}}}
    passes_both = {
        "parity": {"holds_by_decisions": True, "holds_by_own_calibration": True},
        "own_calibration": own,
    }
    assert backend_calibration(passes_both, views)["onnx-int8"] == {"views_decision_threshold": 0.79}
    own_only = {
        "parity": {"holds_by_decisions": False, "holds_by_own_calibration": True},
        "own_calibration": own,
    }
    assert backend_calibration(own_only, views)["onnx-int8"] == {
        "decision_threshold": 0.77,
        "views_decision_threshold": 0.79,
    }
    neither = {
        "parity": {"holds_by_decisions": False, "holds_by_own_calibration": False},
        "own_calibration": own,
    }
    assert "decision_threshold" not in backend_calibration(neither, views)["onnx-int8"]
