"""Validation calibration by hand-made probability maps; evaluation end to end on synthetic tiles."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdefect.calibrate import budget_threshold, choose_postprocess
from mtdefect.data.split import Record
from mtdefect.evaluate import evaluate
from mtdefect.inference import postprocess
from mtdefect.inference.network import build_net
from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings
from mtdefect.model.bundle import write_model_dir
from mtdefect.scoring import ScoredImage
from tests.conftest import head_model


def item(cls: str, truth: np.ndarray, prob: np.ndarray) -> ScoredImage:
    record = Record(f"{cls}/x.jpg", f"{cls}/x.png", cls, "val", "")
    return ScoredImage(record, np.zeros(truth.shape, np.uint8), truth, prob.astype(np.float32))


def test_budget_threshold_allows_the_budgeted_false_alarms_only() -> None:
    free = [0.9, 0.7, 0.3] + [0.1] * 97  # 100 defect-free tiles
    assert budget_threshold(free, 0.0) == np.nextafter(0.9, 1.0)  # flags none of them
    t = budget_threshold(free, 0.01)  # one false alarm allowed: the 0.9 tile
    assert 0.7 < t < 0.70001 and sum(s >= t for s in free) == 1
    assert budget_threshold([1.0, 1.0], 0.0) == 1.0  # saturated: the strictest possible
    assert budget_threshold([], 0.01) == 0.5


def test_calibration_prefers_the_score_window_that_ignores_specks() -> None:
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    defect_prob = np.where(truth, 0.8, 0.05)
    free_prob = np.full((40, 40), 0.05)
    free_prob[30, 30] = 0.99  # one bright pixel on a defect-free tile outranks the real defect's pixels
    items = [item("MT_Crack", truth, defect_prob), item("MT_Free", np.zeros((40, 40), bool), free_prob)]
    post, report = choose_postprocess(
        items, thresholds=(0.5, 0.9), min_areas=(0,), max_false_alarm_rate=0.0, score_windows=(1, 5)
    )
    rows = {r["score_window"]: r for r in report["decision"]}
    assert rows[1]["recall"] == 0.0 and rows[1]["auroc"] == 0.0
    assert rows[5]["recall"] == 1.0 and rows[5]["false_alarm_rate"] == 0.0 and rows[5]["auroc"] == 1.0
    assert post.score_window == 5 and (0.99 + 24 * 0.05) / 25 < post.decision_threshold < 0.088
    assert post.threshold == 0.5 and report["chosen"]["dice"] == 1.0  # 0.9 would find nothing
    assert report["chosen"]["objective"] == 1.0
    for prob, truth_mask, expected in ((defect_prob, truth, True), (free_prob, None, False)):
        prediction = postprocess(prob.astype(np.float32), post)
        assert prediction.defective is expected
        if truth_mask is not None:
            assert np.array_equal(prediction.mask > 0, truth_mask)
        else:
            assert not prediction.mask.any() and prediction.regions == []  # 0.99 ≥ 0.5, yet judged clean


def with_head(scored: ScoredImage, defect: float) -> ScoredImage:
    """The tile head's answer added: P(MT_Crack) = ``defect``."""
    return replace(scored, class_scores={"MT_Free": 1 - defect, "MT_Crack": defect, "MT_Break": 0.0})


def test_decision_criterion_auroc_keeps_the_source_that_ranks_every_tile() -> None:
    """The head ranks 19 of 20 defective tiles above every clean one but one clean tile outscores them
    all, so at a zero budget it flags nothing; the mask's speck score flags 2 defective tiles and
    ranks the rest among the clean ones. ``recall`` crowns the mask, ``auroc`` keeps the head."""
    rng = np.random.default_rng(0)
    truth = np.zeros((16, 16), bool)
    truth[4:8, 4:8] = True
    items = []
    for i in range(20):
        prob = np.full((16, 16), 0.1 + 0.01 * i)
        prob[5, 5] = 0.95 if i < 2 else 0.3 + 0.02 * rng.random()
        head = (
            0.99 if i == 0 else 0.6 + 0.01 * i
        )  # tile 0 is the only one the head misses below the clean max
        items.append(with_head(item("MT_Crack", truth, prob), head))
    for i in range(20):
        prob = np.full((16, 16), 0.1)
        prob[8, 8] = 0.3 + 0.02 * rng.random()
        head = 0.995 if i == 0 else 0.05 + 0.01 * i  # one clean tile the head finds strange
        items.append(with_head(item("MT_Free", np.zeros((16, 16), bool), prob), head))
    common = dict(thresholds=(0.5,), min_areas=(0,), max_false_alarm_rate=0.0, score_windows=(1,))
    by_recall, report = choose_postprocess(items, **common)
    rows = {r["score_source"]: r for r in report["decision"]}
    assert rows["mask"]["recall"] > rows["head"]["recall"] and rows["head"]["auroc"] > rows["mask"]["auroc"]
    assert by_recall.score_source == "mask" and report["chosen"]["decision_criterion"] == "recall"
    by_auroc, report = choose_postprocess(items, decision_criterion="auroc", **common)
    assert by_auroc.score_source == "head" and report["chosen"]["decision_criterion"] == "auroc"
    by_head, report = choose_postprocess(items, decision_criterion="head", **common)
    assert by_head.score_source == "head" and by_head.decision_threshold == by_auroc.decision_threshold
    flipped = [with_head(i, 1 - i.class_scores["MT_Crack"]) for i in items]  # a head that ranks backwards
    assert choose_postprocess(flipped, decision_criterion="head", **common)[0].score_source == "head"
    assert choose_postprocess(flipped, decision_criterion="auroc", **common)[0].score_source == "mask"
    with pytest.raises(ValueError, match="decision_criterion"):
        choose_postprocess(items, decision_criterion="f1", **common)


def test_calibration_counts_missed_tiles_as_empty_masks() -> None:
    truth = np.zeros((20, 20), bool)
    truth[5:10, 5:10] = True
    faint = item("MT_Blowhole", truth, np.where(truth, 0.6, 0.0))  # scores below the free tile
    strong = item("MT_Crack", truth, np.where(truth, 0.95, 0.0))
    free = item("MT_Free", np.zeros((20, 20), bool), np.full((20, 20), 0.7))
    post, report = choose_postprocess(
        [faint, strong, free], thresholds=(0.5,), min_areas=(0,), max_false_alarm_rate=0.0, score_windows=(1,)
    )
    assert report["chosen"]["recall"] == 0.5 and report["chosen"]["false_alarm_rate"] == 0.0
    assert abs(report["chosen"]["dice"] - 2 * 25 / (2 * 25 + 25)) < 1e-9  # the faint tile's 25 px are missed
    assert report["chosen"]["dice_ungated"] == 1.0  # the segmenter alone found both
    assert report["chosen"]["per_class_dice"] == {"MT_Blowhole": 0.0, "MT_Crack": 1.0}


def test_evaluate_writes_metrics_plots_and_overlays(
    synthetic_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset_dir, manifest = synthetic_dataset
    torch.manual_seed(0)
    net_cfg = {
        "arch": "Unet",
        "encoder": "resnet10t",
        "pretrained": False,
        "in_channels": 1,
        "classes": 1,
        "decoder_channels": [16, 16, 8, 8, 8],
    }
    settings = ModelSettings(
        net=net_cfg, preprocess=PreprocessSettings(), postprocess=PostprocessSettings(0.5, 0)
    )
    write_model_dir(build_net(**net_cfg).eval(), settings, tmp_path / "model")
    result = evaluate(
        tmp_path / "model", dataset_dir, manifest, tmp_path / "reports", n_overlays=3, worst_n=2
    )
    test = result["test"]
    assert test["images"] == 12 and 0 <= test["dice"] <= 1 and 0 <= test["dice_ungated"] <= 1
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == json.loads(json.dumps(result))
    for name in ("roc", "pr", "per_class_dice", "per_image"):
        assert json.loads((tmp_path / "reports" / "plots" / f"{name}.json").read_text())
    overlays = sorted(p.name for p in (tmp_path / "reports" / "overlays").glob("*.png"))
    assert (
        sum(n.startswith("sample_") for n in overlays) == 3
        and sum(n.startswith("worst_") for n in overlays) == 2
    )


def head_item(cls: str, truth: np.ndarray, prob: np.ndarray, scores: dict[str, float]) -> ScoredImage:
    return ScoredImage(
        item(cls, truth, prob).record, np.zeros(truth.shape, np.uint8), truth, prob.astype(np.float32), scores
    )


CLASSES = ("MT_Blowhole", "MT_Crack", "MT_Free")


def scores_for(free: float, crack: float) -> dict[str, float]:
    return {"MT_Blowhole": 1 - free - crack, "MT_Crack": crack, "MT_Free": free}


def test_calibration_takes_the_head_when_it_ranks_tiles_better_and_the_service_answers_alike() -> None:
    truth = np.zeros((30, 30), bool)
    truth[5:15, 5:15] = True
    # the mask paints a confident blob on the free tile (mask scores cannot separate the tiles)
    blob = np.where(truth, 0.9, 0.0)
    items = [
        head_item("MT_Crack", truth, blob, scores_for(0.1, 0.8)),
        head_item("MT_Free", np.zeros((30, 30), bool), blob, scores_for(0.9, 0.05)),
    ]
    post, report = choose_postprocess(
        items, thresholds=(0.5,), min_areas=(0,), max_false_alarm_rate=0.0, score_windows=(1, 5)
    )
    rows = {(r["score_source"], r["score_window"]): r for r in report["decision"]}
    assert rows[("head", 1)]["recall"] == 1.0 and rows[("mask", 5)]["recall"] == 0.0
    assert post.score_source == "head" and 1 - 0.9 < post.decision_threshold <= 1 - 0.1
    crack = postprocess(blob.astype(np.float32), post, scores_for(0.1, 0.8))
    assert crack.defective and crack.defect_class == "MT_Crack" and crack.score == pytest.approx(0.9)
    assert [r.class_name for r in crack.regions] == ["MT_Crack"] and crack.regions[0].class_score == 0.8
    clean = postprocess(blob.astype(np.float32), post, scores_for(0.9, 0.05))
    assert not clean.defective and clean.defect_class is None and clean.regions == []
    assert report["chosen"]["classification"]["accuracy"] == 1.0


def test_mean_class_dice_keeps_the_small_defects_that_pooled_dice_deletes() -> None:
    big, small = np.zeros((60, 60), bool), np.zeros((60, 60), bool)
    big[:, :40] = True  # a fray-like 2,400 px defect, found with a few stray specks beside it
    small[30:33, 30:33] = True  # a 9 px blowhole
    big_prob = np.where(big, 0.9, 0.0)
    big_prob[::7, 45::7] = 0.9  # 1-px specks: a larger minimum area removes them
    items = [item("MT_Fray", big, big_prob), item("MT_Blowhole", small, np.where(small, 0.9, 0.0))]
    common = dict(thresholds=(0.5,), min_areas=(0, 16), max_false_alarm_rate=0.0, score_windows=(1,))
    pooled, _ = choose_postprocess(items, mask_criterion="dice", **common)
    per_class, report = choose_postprocess(items, mask_criterion="mean_class_dice", **common)
    assert pooled.min_region_area == 16  # the specks cost more pooled Dice than the blowhole's 9 px
    assert per_class.min_region_area == 0 and report["chosen"]["per_class_dice"]["MT_Blowhole"] == 1.0
    with pytest.raises(ValueError, match="mask_criterion"):
        choose_postprocess(items, mask_criterion="iou", **common)


def test_split_metrics_confusion_counts_missed_tiles_as_free() -> None:
    from mtdefect.scoring import split_metrics

    truth = np.zeros((20, 20), bool)
    truth[2:6, 2:6] = True
    prob = np.where(truth, 0.9, 0.0)
    items = [
        head_item("MT_Crack", truth, prob, scores_for(0.1, 0.8)),
        head_item("MT_Blowhole", truth, prob, scores_for(0.6, 0.3)),  # missed, and its top class is wrong
        head_item("MT_Free", np.zeros((20, 20), bool), prob * 0, scores_for(0.95, 0.0)),
    ]
    result = split_metrics(items, PostprocessSettings(score_source="head", decision_threshold=0.5))
    assert result["detection"]["recall"] == 0.5 and result["detection"]["false_alarm_rate"] == 0.0
    confusion = result["confusion"]
    assert confusion["labels"] == list(CLASSES)
    assert confusion["matrix"] == [[0, 0, 1], [0, 1, 0], [0, 0, 1]]  # the missed blowhole counts as free
    top1 = result["classification"]
    assert top1["labels"] == ["MT_Blowhole", "MT_Crack"] and top1["accuracy"] == 0.5
    assert top1["per_class"]["MT_Crack"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert result["mean_class_dice"] == pytest.approx(0.5)  # crack 1.0, blowhole 0 (judged clean)


def test_evaluate_a_model_with_a_tile_head_writes_the_confusion_plot(
    synthetic_dataset, tmp_path: Path
) -> None:
    from mtdefect.inference.network import build_net as build

    dataset_dir, manifest = synthetic_dataset
    torch.manual_seed(0)
    net_cfg, settings = head_model(encoder="resnet10t")
    classes = settings.class_names
    write_model_dir(build(**net_cfg).eval(), settings, tmp_path / "model")
    test = evaluate(tmp_path / "model", dataset_dir, manifest, tmp_path / "reports", n_overlays=2, worst_n=1)[
        "test"
    ]
    assert test["score_source"] == "head" and set(test["classification"]["labels"]) == set(classes) - {
        "MT_Free"
    }
    rows = json.loads((tmp_path / "reports" / "plots" / "confusion.json").read_text())
    assert len(rows) == test["images"] and {r["actual"] for r in rows} <= set(classes)
