"""The rim-defect breakdown: which photographs count as rim ones, and the Dice and recall at the
false-alarm budget of each part, on rows whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mtdefect.cv.rim_defects import band_pixels, summarise


def test_band_pixels_counts_the_defect_inside_the_border_band() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[20:30, 20:30] = True  # interior: nothing in the 2-pixel band
    assert band_pixels(mask) == (0, 100)
    mask[:, :2] = True  # a chipped left edge, all inside the band
    assert band_pixels(mask) == (100, 200)


def test_rim_and_interior_photographs_are_scored_apart() -> None:
    clean = [
        {"image": f"f{i}", "class": "MT_Free", "group": f"F/{i}", "z": float(i), "tp": 0, "fp": 0, "fn": 0}
        for i in range(100)
    ]
    defects = [  # b0: its defect on the rim, far above every clean tile; b1: interior, below the budget
        {"image": "b0", "class": "MT_Break", "group": "B/0", "z": 200.0, "tp": 4, "fp": 0, "fn": 4},
        {"image": "b1", "class": "MT_Break", "group": "B/1", "z": 50.0, "tp": 0, "fp": 2, "fn": 6},
    ]
    # out-of-fold rows as cv.fold writes them (z added by false_alarms.head_z_rows)
    rows = [
        {**r, "defective": r["z"] > 98, "fold": 0, "fp_border": 0, "score": r["z"], "top1": None}
        for r in clean + defects
    ]
    summary = summarise(rows, {"b0": (8, 10), "b1": (1, 10)}, "MT_Free", 0.01, n_resamples=50)
    for name in ("MT_Break", "all"):
        s = summary["classes"][name]
        assert s["images"] == 2 and s["defect_pixels_in_band"] == pytest.approx(9 / 20)
        rim, interior = s["rim"], s["interior"]
        assert rim["images"] == interior["images"] == 1
        assert rim["dice"]["value"] == pytest.approx(8 / 12) and interior["dice"]["value"] == 0.0
        assert rim["recall_at_decision"] == 1.0 and interior["recall_at_decision"] == 0.0
        assert rim["recall_at_1pct_fa"]["value"] == 1.0 and interior["recall_at_1pct_fa"]["value"] == 0.0
    only_interior = summarise(rows, {"b0": (0, 10), "b1": (0, 10)}, "MT_Free", 0.01, n_resamples=50)
    assert only_interior["classes"]["MT_Break"]["rim"] == {
        "images": 0,
        "tiles": 0,
        "dice": None,
        "recall_at_decision": None,
        "recall_at_1pct_fa": None,
    }


def test_the_class_matched_gap_removes_the_class_mix() -> None:
    """Rim photographs mostly of a weak class: pooled, the rim looks far worse; within each class, rim
    and interior are found alike, so the class-matched gap is zero."""
    clean = [{"image": f"f{i}", "class": "MT_Free", "group": f"F/{i}", "z": float(i)} for i in range(100)]
    clean = [{**r, "tp": 0, "fp": 0, "fn": 0} for r in clean]
    strong = [  # Uneven: Dice 0.8 on the rim and inside alike; weak Break: Dice 0.2 on both
        {"image": f"u{i}", "class": "MT_Uneven", "group": f"U/{i}", "z": 200.0, "tp": 8, "fp": 2, "fn": 2}
        for i in range(4)
    ]
    weak = [
        {"image": f"b{i}", "class": "MT_Break", "group": f"B/{i}", "z": 200.0, "tp": 2, "fp": 8, "fn": 8}
        for i in range(4)
    ]
    rows = [
        {**r, "defective": r["z"] > 98, "fold": 0, "fp_border": 0, "score": r["z"]}
        for r in clean + strong + weak
    ]
    rim = {"u0", "b0", "b1", "b2"}  # one Uneven and three Break photographs on the rim
    pixels = {r["image"]: ((9, 10) if r["image"] in rim else (0, 10)) for r in strong + weak}
    summary = summarise(rows, pixels, "MT_Free", 0.01, n_resamples=50)
    pooled = summary["classes"]["all"]
    assert pooled["rim"]["dice"]["value"] == pytest.approx(2 * 14 / (2 * 14 + 26 + 26))  # 0.35
    assert pooled["interior"]["dice"]["value"] == pytest.approx(2 * 26 / (2 * 26 + 14 + 14))  # 0.65
    gap = pooled["class_matched_rim_gap"]
    assert gap["dice"]["value"] == pytest.approx(0.0) and gap["recall_at_1pct_fa"]["value"] == 0.0
    assert "class_matched_rim_gap" not in summary["classes"]["MT_Break"]
