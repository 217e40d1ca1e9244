"""The mask gate (issue #20): a tile's regions shown from a calibrated score below the reject decision."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mtdefect.calibrate import choose_postprocess, gate_search, gated_settings, mask_gate_candidates
from mtdefect.cv.pool import OutOfFold, pool
from mtdefect.cv.rescore import parse_overrides
from mtdefect.data.split import Record
from mtdefect.docs_tables.cv import gate_label
from mtdefect.inference import postprocess
from mtdefect.inference.postprocess import gate_score, passes_gate, shows_regions
from mtdefect.inference.settings import ModelSettings, PostprocessSettings
from mtdefect.scoring import ScoredImage, split_metrics

SHAPE = (24, 24)


def scored(cls: str, peak: float, name: str, scores: dict[str, float] | None = None) -> ScoredImage:
    """A tile whose 6×6 patch has probability ``peak`` (its score under window 1); defective tiles'
    truth is that patch."""
    prob = np.full(SHAPE, 0.05, np.float32)
    prob[8:14, 8:14] = peak
    truth = np.zeros(SHAPE, bool)
    if cls != "MT_Free":
        truth[8:14, 8:14] = True
    record = Record(f"{cls}/{name}.jpg", f"{cls}/{name}.png", cls, "val", "")
    return ScoredImage(record, np.zeros(SHAPE, np.uint8), truth, prob, dict(scores or {}))


def test_a_tile_between_the_gate_and_the_decision_shows_its_regions_but_is_not_rejected() -> None:
    tile = scored("MT_Crack", 0.8, "a", {"MT_Crack": 0.7, "MT_Blowhole": 0.1, "MT_Free": 0.2})
    decided = PostprocessSettings(threshold=0.5, decision_threshold=0.9)
    gated = postprocess(tile.probability, decided, tile.class_scores)
    assert not gated.defective and gated.regions == [] and not gated.mask.any()

    suspect = postprocess(tile.probability, replace(decided, mask_gate_threshold=0.5), tile.class_scores)
    assert not suspect.defective and suspect.defect_class is None  # not rejected
    assert len(suspect.regions) == 1 and suspect.regions[0].area == 36 and int((suspect.mask > 0).sum()) == 36
    assert suspect.regions[0].class_name == "MT_Crack"  # the regions shown carry the most probable class

    above = replace(decided, mask_gate_threshold=0.85)
    assert postprocess(tile.probability, above).regions == []  # 0.8 < 0.85: no regions


def test_a_windowed_gate_asks_for_a_solid_defect_not_a_speck() -> None:
    speck = np.full(SHAPE, 0.05, np.float32)
    speck[3, 3] = 0.95  # one bright pixel: score 0.95 under window 1, (0.95 + 24 * 0.05) / 25 under 5
    solid = scored("MT_Crack", 0.8, "b").probability
    post = PostprocessSettings(
        threshold=0.5, decision_threshold=0.99, mask_gate_threshold=0.5, mask_gate_window=5
    )
    assert gate_score(speck, post, 0.95) == pytest.approx((0.95 + 24 * 0.05) / 25, abs=1e-6)
    assert not shows_regions(speck, post, 0.95) and postprocess(speck, post).regions == []
    assert shows_regions(solid, post, 0.8) and len(postprocess(solid, post).regions) == 1
    by_score = replace(post, mask_gate_window=None)  # the decision's own score: the speck passes
    assert shows_regions(speck, by_score, 0.95) and len(postprocess(speck, by_score).regions) == 1


def test_the_gate_never_hides_a_rejected_tiles_regions() -> None:
    tile = scored("MT_Crack", 0.95, "a")
    post = PostprocessSettings(threshold=0.5, decision_threshold=0.9, mask_gate_threshold=0.99)
    answer = postprocess(tile.probability, post)
    assert answer.defective and len(answer.regions) == 1
    assert shows_regions(tile.probability, PostprocessSettings(mask_gate_threshold=0.99), 0.0)  # no decision


def test_settings_saved_without_the_gate_load_gated_at_the_decision(tmp_path) -> None:
    settings = ModelSettings(net={}, postprocess=PostprocessSettings(decision_threshold=0.7))
    data = settings.to_dict()
    del data["postprocess"]["mask_gate_threshold"], data["postprocess"]["mask_gate_window"]
    loaded = ModelSettings.from_dict(data)
    assert loaded.postprocess.mask_gate_threshold is None and loaded.postprocess.mask_gate_window is None
    gated = ModelSettings(
        net={},
        postprocess=PostprocessSettings(decision_threshold=0.7, mask_gate_threshold=0.2, mask_gate_window=15),
    )
    gated.save(tmp_path)
    assert ModelSettings.load(tmp_path).postprocess == gated.postprocess


def validation_items() -> list[ScoredImage]:
    """A faint defective tile (0.6) below a clean tile with one bright patch (0.7), a strong one
    (0.95), and 19 plain clean tiles (0.05)."""
    items = [
        scored("MT_Blowhole", 0.6, "faint"),
        scored("MT_Crack", 0.95, "strong"),
        scored("MT_Free", 0.7, "bright"),
    ]
    return items + [scored("MT_Free", 0.05, f"plain{i}") for i in range(19)]


def calibrate(items: list[ScoredImage], max_region_rate: float | None) -> tuple[PostprocessSettings, dict]:
    return choose_postprocess(
        items,
        thresholds=(0.5,),
        min_areas=(0,),
        max_false_alarm_rate=0.0,
        score_windows=(1,),
        max_region_rate=max_region_rate,
    )


def test_calibration_without_a_region_budget_gates_the_mask_at_the_decision() -> None:
    post, report = calibrate(validation_items(), None)
    assert post.mask_gate_threshold is None and post.decision_threshold == pytest.approx(0.7, abs=1e-4)
    assert report["chosen"]["recall"] == 0.5  # the faint tile is missed by the decision...
    assert report["chosen"]["per_class_dice"] == {
        "MT_Blowhole": 0.0,
        "MT_Crack": 1.0,
    }  # ...and its mask hidden
    assert report["gates"] == []


def test_calibration_opens_the_gate_within_the_clean_tiles_budget() -> None:
    items = validation_items()
    post, report = calibrate(items, 0.1)
    chosen = report["chosen"]
    # a gate that lets the faint tile's mask through: just above the plain clean tiles' score
    assert post.mask_gate_threshold == pytest.approx(0.05, abs=1e-6) and post.mask_gate_threshold > 0.05
    assert chosen["per_class_dice"] == {"MT_Blowhole": 1.0, "MT_Crack": 1.0} and chosen["dice"] == 1.0
    assert chosen["recall"] == 0.5 and chosen["false_alarm_rate"] == 0.0  # the decision is unchanged
    assert chosen["clean_region_rate"] == pytest.approx(1 / 20)  # the bright clean tile shows its patch
    result = split_metrics(items, post)
    assert result["clean_region_rate"] == pytest.approx(0.05) and result["dice"] == 1.0

    # a budget the bright clean tile does not fit in: the decision's own gate
    strict, strict_report = calibrate(items, 0.01)
    assert strict.mask_gate_threshold is None
    assert strict_report["chosen"]["per_class_dice"]["MT_Blowhole"] == 0.0
    assert strict_report["gates"] and all(
        r["clean_region_rate"] > 0.01 or r["mean_class_dice"] <= 0.5 for r in strict_report["gates"]
    )


def test_the_gate_search_agrees_with_split_metrics_row_by_row() -> None:
    items = validation_items() + [scored("MT_Free", 0.55, "speckled")]
    decision = PostprocessSettings(threshold=0.5, decision_threshold=0.96)
    rows = gate_search(items, decision, (0.5, 0.7), (0, 40), 0.1, (1, 5))
    assert len({(r["mask_gate_window"], r["mask_gate_threshold"]) for r in rows}) >= 3
    for row in rows:
        expected = split_metrics(items, gated_settings(decision, row))
        for key in ("dice", "mean_class_dice", "clean_region_rate"):
            assert row[key] == pytest.approx(expected[key], nan_ok=True), (key, row)


def test_gate_candidates() -> None:
    clean = {None: [0.9, 0.7, 0.5, 0.4] + [0.1] * 16, 5: [0.3] * 20}  # gate scores of 20 clean tiles
    gates = mask_gate_candidates(clean, 0.2)
    assert gates[-1] == (None, 0.0) and len(set(gates)) == len(gates)
    assert {window for window, _ in gates} == {None, 5}
    by_score = [g for w, g in gates if w is None and g > 0]  # strictest first: a quarter, half, all of 0.2
    assert by_score == sorted(by_score, reverse=True) and len(by_score) == 3
    assert [sum(s >= gate for s in clean[None]) for gate in by_score] == [1, 2, 4]
    window_gates = [g for w, g in gates if w == 5]  # 20 tied scores: no level lets only a share through
    assert len(window_gates) == 1 and not any(s >= window_gates[0] for s in clean[5])


def test_the_gate_rule_is_one_function_for_tiles_and_arrays() -> None:
    post = PostprocessSettings(decision_threshold=0.9, mask_gate_threshold=0.4)
    scores, gates = np.array([0.95, 0.5, 0.5, 0.1]), np.array([0.0, 0.45, 0.3, 0.9])
    assert passes_gate(scores, gates, post).tolist() == [True, True, False, True]
    assert [passes_gate(s, g, post) for s, g in zip(scores, gates)] == [True, True, False, True]
    assert passes_gate(scores, gates, replace(post, mask_gate_threshold=None)).tolist() == [
        True,
        False,
        False,
        False,
    ]
    assert passes_gate(scores, gates, PostprocessSettings()).tolist() == [True] * 4  # decided by regions


def oof_rows() -> list[dict]:
    def row(image: str, cls: str, fp: int, group: str, fold: int) -> dict:
        defective = cls != "MT_Free"
        return {
            "image": image,
            "class": cls,
            "group": group,
            "fold": fold,
            "tp": 5 if defective else 0,
            "fp": fp,
            "fn": 1 if defective else 0,
            "fp_border": 0,
            "score": 0.9 if defective else 0.1,
            "defective": defective,
            "top1": cls if defective else None,
        }

    return [
        row("MT_Crack/a.jpg", "MT_Crack", 0, "MT_Crack/0", 0),
        row("MT_Free/b.jpg", "MT_Free", 12, "MT_Free/0", 0),  # a clean image showing a region
        row("MT_Free/c.jpg", "MT_Free", 0, "MT_Free/1", 1),
        row("MT_Free/d.jpg", "MT_Free", 0, "MT_Free/2", 1),
        row("MT_Free/e.jpg", "MT_Free", 0, "MT_Free/3", 1),
    ]


def test_pooled_summary_counts_clean_images_showing_regions() -> None:
    rows = oof_rows()
    oof = OutOfFold(rows, "MT_Free")
    assert oof.clean_region_rate(np.arange(5)) == 0.25
    assert np.isnan(oof.clean_region_rate(np.array([0])))  # no clean image drawn
    summary = pool(rows, "MT_Free", n_resamples=50, group_gap=None)
    assert summary["clean_region_rate"]["value"] == 0.25
    assert [f["clean_region_rate"] for f in summary["per_fold"]] == [1.0, 0.0]


def test_rescore_takes_calibration_overrides_and_the_table_names_the_gate() -> None:
    assert parse_overrides(["calibration.max_region_rate=null", "preprocess.pad=edge"]) == {
        "calibration": {"max_region_rate": None},
        "preprocess": {"pad": "edge"},
    }
    assert gate_label({}) == "at decision"  # summaries written before the gate existed
    assert gate_label({"max_region_rate": 0.05}) == "≤ 0.05 clean"
    assert gate_label(
        {"max_region_rate": 0.05, "rescored_with": {"calibration": {"max_region_rate": None}}}
    ) == ("at decision")
