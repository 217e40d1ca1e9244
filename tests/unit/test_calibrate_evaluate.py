"""Validation calibration by hand-made probability maps; evaluation end to end on synthetic tiles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mtdefect.calibrate import choose_postprocess
from mtdefect.data.split import Record
from mtdefect.evaluate import ScoredImage, evaluate
from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings
from mtdefect.model.bundle import write_model_dir
from mtdefect.model.net import build_net


def item(cls: str, truth: np.ndarray, prob: np.ndarray) -> ScoredImage:
    record = Record(f"{cls}/x.jpg", f"{cls}/x.png", cls, "val", "")
    return ScoredImage(record, np.zeros(truth.shape, np.uint8), truth, prob.astype(np.float32))


def test_calibration_respects_false_alarm_budget() -> None:
    truth = np.zeros((20, 20), bool)
    truth[5:10, 5:10] = True
    defect_prob = np.where(truth, 0.75, 0.05)
    free_prob = np.full((20, 20), 0.05)
    free_prob[0:3, 0:3] = 0.65  # a 9-pixel speck on a defect-free tile
    items = [item("MT_Crack", truth, defect_prob), item("MT_Free", np.zeros((20, 20), bool), free_prob)]
    post, table = choose_postprocess(items, thresholds=(0.5, 0.7), min_areas=(0, 16), max_false_alarm_rate=0.0)
    assert len(table) == 4
    # 0.5/0: flags the speck (false alarm); 0.7/0 and 0.7/16 and 0.5/16 do not. All find the crack
    # perfectly, so the tie is broken towards the fewest false alarms, then the first best objective.
    assert post.threshold == 0.5 and post.min_region_area == 16 or post.threshold == 0.7
    chosen = next(r for r in table if r["threshold"] == post.threshold and r["min_region_area"] == post.min_region_area)
    assert chosen["false_alarm_rate"] == 0.0 and chosen["dice"] == 1.0 and chosen["recall"] == 1.0


def test_calibration_falls_back_to_fewest_false_alarms() -> None:
    free_prob = np.full((10, 10), 0.95)
    items = [item("MT_Free", np.zeros((10, 10), bool), free_prob)]
    post, _ = choose_postprocess(items, thresholds=(0.5,), min_areas=(0, 200), max_false_alarm_rate=0.0)
    assert post.min_region_area == 200  # only the large minimum area silences the false alarm


def test_evaluate_writes_metrics_plots_and_overlays(synthetic_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    dataset_dir, manifest = synthetic_dataset
    torch.manual_seed(0)
    net_cfg = {"arch": "Unet", "encoder": "resnet10t", "pretrained": False, "in_channels": 1, "classes": 1,
               "decoder_channels": [16, 16, 8, 8, 8]}
    settings = ModelSettings(net=net_cfg, preprocess=PreprocessSettings(), postprocess=PostprocessSettings(0.5, 0))
    write_model_dir(build_net(**net_cfg).eval(), settings, tmp_path / "model")
    result = evaluate(tmp_path / "model", dataset_dir, manifest, tmp_path / "reports", n_overlays=3, worst_n=2)
    test = result["test"]
    assert test["images"] == 12 and 0 <= test["dice"] <= 1
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == json.loads(json.dumps(result))
    for name in ("roc", "pr", "per_class_dice", "per_image"):
        assert json.loads((tmp_path / "reports" / "plots" / f"{name}.json").read_text())
    overlays = sorted(p.name for p in (tmp_path / "reports" / "overlays").glob("*.png"))
    assert sum(n.startswith("sample_") for n in overlays) == 3 and sum(n.startswith("worst_") for n in overlays) == 2
