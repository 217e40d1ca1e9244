"""The head's defect score keeps its precision for very clean tiles (``postprocess.defect_probability``).

1 − P(free) rounds to exactly 0 once P(free) rounds to 1: the clean tiles a threshold and the
decision's z-scale are set on then tie at the floor (session 17: one fold model with 51 % of its clean
validation scores there). The score is the defect classes' probabilities summed instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdefect.cv.decision import normalised
from mtdefect.inference.postprocess import defect_log_odds, defect_probability, softmax_scores, tile_score
from mtdefect.inference.settings import PostprocessSettings

CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven")
FREE = CLASSES.index("MT_Free")


def clean_logits(margin: float) -> np.ndarray:
    """Logits where the free class leads every (equal) defect class by ``margin``."""
    logits = np.zeros(len(CLASSES))
    logits[FREE] = margin
    return logits


def test_it_equals_one_minus_p_free_where_that_does_not_round() -> None:
    logits = np.random.default_rng(0).normal(0, 3, (200, len(CLASSES)))
    expected = 1.0 - torch.softmax(torch.from_numpy(logits), dim=1)[:, FREE].numpy()
    np.testing.assert_allclose(defect_probability(logits, FREE), expected, rtol=1e-9)


def test_very_clean_tiles_keep_their_order_where_one_minus_p_free_is_zero() -> None:
    margins = np.array([20.0, 40.0, 60.0])
    logits = np.stack([clean_logits(m) for m in margins])
    old = 1.0 - torch.softmax(torch.from_numpy(logits).float(), dim=1)[:, FREE].numpy()
    assert (old == 0).all()  # what the float32 score gave: three ties at zero
    new = defect_probability(logits.astype(np.float32), FREE)
    assert (np.diff(new) < 0).all()
    # the log odds are exact: five defect classes at −margin each → log 5 − margin
    np.testing.assert_allclose(defect_log_odds(new), np.log(5) - margins, rtol=1e-9)


def test_the_served_tile_score_sums_the_defect_classes() -> None:
    settings = PostprocessSettings(score_source="head", decision_threshold=0.5)
    probability = np.zeros((4, 4), np.float32)
    scores = [tile_score(probability, settings, softmax_scores(clean_logits(m), CLASSES)) for m in (40, 50)]
    assert scores[0] > scores[1] > 0.0
    assert scores[0] == pytest.approx(5 * np.exp(-40), rel=1e-9)
    defective = softmax_scores(-clean_logits(5.0), CLASSES)  # free class 5 behind
    assert tile_score(probability, settings, defective) == pytest.approx(1 - defective["MT_Free"], rel=1e-12)


def test_log_odds_are_finite_at_both_ends() -> None:
    odds = defect_log_odds(np.array([0.0, 1e-300, 0.5, 1.0]))
    assert np.isfinite(odds).all()
    assert (np.diff(odds) > 0).all()
    assert odds[2] == 0.0


def test_the_decision_scale_keeps_a_spread_over_very_clean_references() -> None:
    """Clean references spread over margins 20–60: the robust z of a tile at margin 10 is a finite,
    large number, where the old transform's floor (1e-7) tied them all and collapsed the MAD."""
    reference = defect_probability(np.stack([clean_logits(m) for m in np.linspace(20, 60, 41)]), FREE)
    held_out = defect_probability(np.stack([clean_logits(m) for m in (10.0, 40.0)]), FREE)
    z = normalised("head", held_out, reference)
    assert z[1] == pytest.approx(0.0, abs=1e-9)  # the references' median
    assert z[0] == pytest.approx(30 / (1.4826 * 10), rel=1e-6)  # 30 log-odds above, MAD 10
