"""``calibration.max_latency_ms``: test-time flip sets slower than the budget are not eligible, and
the calibration report records each set's measured latency and what it buys per millisecond."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from mtdefect import calibrate
from mtdefect.calibrate import calibrate_on_validation, eligible_flip_sets, flip_tradeoff
from mtdefect.data.split import Record
from mtdefect.inference import ModelSettings, PostprocessSettings, Predictor
from mtdefect.scoring import ScoredImage


def test_no_budget_leaves_every_set_eligible() -> None:
    assert eligible_flip_sets([(), ("vertical",)], [10.0, 20.0], None) == [True, True]


def test_sets_over_the_budget_are_not_eligible_but_the_cheapest_always_is() -> None:
    sets = [(), ("vertical",), ("horizontal", "vertical", "both")]
    assert eligible_flip_sets(sets, [10.0, 20.0, 40.0], 25.0) == [True, True, False]
    assert eligible_flip_sets(sets, [10.0, 20.0, 40.0], 20.0) == [True, True, False]  # within = eligible
    assert eligible_flip_sets(sets, [30.0, 60.0, 90.0], 5.0) == [True, False, False]
    assert eligible_flip_sets([("vertical",), ()], [20.0, math.nan], 25.0) == [True, True]


def test_the_tradeoff_is_gain_per_extra_millisecond_against_the_fewest_flips() -> None:
    rows = [
        ([], {"recall": 0.80, "auroc": 0.95, "dice": 0.60}),
        (["vertical"], {"recall": 0.86, "auroc": 0.96, "dice": 0.62}),
    ]
    out = flip_tradeoff(rows, [20.0, 40.0], [True, False])
    assert out[0]["extra_ms"] == 0 and "recall_gain_per_ms" not in out[0]
    assert out[1]["latency_ms"] == 40.0 and out[1]["eligible"] is False
    assert out[1]["recall_gain_per_ms"] == pytest.approx(0.003) and out[1][
        "dice_gain_per_ms"
    ] == pytest.approx(0.001)


MS_PER_VIEW = 15.0


def slow_predictor() -> Predictor:
    """A fake network: MS_PER_VIEW of sleep per view (so each flip costs one more), zero logits."""

    def runner(batch: np.ndarray):
        time.sleep(MS_PER_VIEW / 1000.0 * batch.shape[0])
        return np.zeros(batch.shape, np.float32), None

    return Predictor(ModelSettings(net={}), runner, "fake")


@pytest.fixture
def flips_win_on_recall(monkeypatch):
    """Scoring goes through the (timed) predictor; the flipped set is made to win on recall, so only
    the latency budget can keep it out."""
    records = [Record(f"MT_Free/{i}.jpg", f"MT_Free/{i}.png", "MT_Free", "val", "") for i in range(5)]

    def score_split(predictor, data_dir, val_records):
        for record in val_records:
            gray = np.full((40, 50), 100, np.uint8)
            probability, scores = predictor.infer(gray)
            item = ScoredImage(record, gray, np.zeros(gray.shape, bool), probability, scores)
            item.flips = predictor.settings.test_time_flips
            yield item

    def choose_postprocess(items, free_class="MT_Free", **options):
        recall = 0.9 if items[0].flips else 0.5
        chosen = {
            "recall": recall,
            "auroc": 0.9,
            "dice": 0.5,
            "mean_class_dice": 0.5,
            "mask_criterion": "mean_class_dice",
        }
        return PostprocessSettings(), {"chosen": chosen}

    monkeypatch.setattr(calibrate, "score_split", score_split)
    monkeypatch.setattr(calibrate, "choose_postprocess", choose_postprocess)
    return records


def test_without_a_budget_the_better_flip_set_wins(flips_win_on_recall) -> None:
    options = {"test_time_flips": [[], ["vertical"]], "max_latency_ms": None}
    flips, _, report = calibrate_on_validation(slow_predictor(), "unused", flips_win_on_recall, options)
    assert flips == ("vertical",)
    none, vertical = report["test_time_flips"]
    # no budget: timings are left out, so the saved report is the same from run to run
    assert math.isnan(none["latency_ms"]) and math.isnan(vertical["latency_ms"])
    assert "recall_gain_per_ms" not in vertical and report["latency"]["max_latency_ms"] is None


def test_a_flip_set_over_the_latency_budget_is_not_chosen(flips_win_on_recall) -> None:
    options = {"test_time_flips": [[], ["vertical"]], "max_latency_ms": 1.5 * MS_PER_VIEW + 5}
    flips, _, report = calibrate_on_validation(slow_predictor(), "unused", flips_win_on_recall, options)
    assert flips == () and report["chosen"]["test_time_flips"] == []
    assert [row["eligible"] for row in report["test_time_flips"]] == [True, False]
    assert report["latency"]["backend"] == "fake"
