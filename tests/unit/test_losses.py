"""The loss terms, on small synthetic logit maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdefect.inference.postprocess import image_score
from mtdefect.model.losses import CombinedLoss, TileScoreLoss

LOW, HIGH = -6.0, 6.0


def _logits(blob: tuple[slice, slice] | None = None, specks: bool = False) -> torch.Tensor:
    logits = torch.full((1, 1, 32, 32), LOW)
    if blob is not None:
        logits[0, 0, blob[0], blob[1]] = HIGH
    if specks:
        logits[0, 0, ::6, ::6] = HIGH
    return logits


def test_tile_score_matches_the_service_score_away_from_the_border() -> None:
    logits = _logits((slice(10, 16), slice(12, 18)))
    probability = torch.sigmoid(logits)
    pooled = torch.nn.functional.avg_pool2d(probability, 5, stride=1).amax().item()
    assert pooled == pytest.approx(image_score(probability[0, 0].numpy(), window=5), abs=1e-6)


def test_a_blob_on_a_clean_crop_costs_more_than_isolated_specks() -> None:
    loss = TileScoreLoss(window=5)
    clean = torch.zeros(1, 1, 32, 32)
    blob = loss(_logits((slice(10, 16), slice(12, 18))), clean)
    specks = loss(_logits(specks=True), clean)
    nothing = loss(_logits(), clean)
    assert blob.item() > 3.0  # the score ≈ 1 → -log(1 - score) is large
    assert nothing.item() < 0.01
    assert nothing.item() < specks.item() < blob.item()


def test_a_defect_crop_wants_a_high_score() -> None:
    loss = TileScoreLoss(window=5)
    target = torch.zeros(1, 1, 32, 32)
    target[0, 0, 10:16, 12:18] = 1
    found = loss(_logits((slice(10, 16), slice(12, 18))), target)
    missed = loss(_logits(), target)
    assert found.item() < 0.05 < 3.0 < missed.item()


def test_the_gradient_reaches_only_the_window_that_fires() -> None:
    logits = _logits((slice(10, 15), slice(12, 17))).requires_grad_()  # exactly one 5x5 window on it
    TileScoreLoss(window=5)(logits, torch.zeros(1, 1, 32, 32)).backward()
    touched = np.argwhere(logits.grad[0, 0].numpy() != 0)
    assert len(touched) == 25  # one 5x5 window
    assert touched.min(0).tolist() >= [10, 12] and touched.max(0).tolist() <= [14, 16]


def test_combined_loss_adds_the_tile_term_only_when_weighted() -> None:
    logits = _logits((slice(10, 16), slice(12, 18)))
    clean = torch.zeros(1, 1, 32, 32)
    without = CombinedLoss(bce=1.0, dice=0.0)(logits, clean)
    with_tile = CombinedLoss(bce=1.0, dice=0.0, tile=0.5, tile_window=5)(logits, clean)
    expected = without + 0.5 * TileScoreLoss(window=5)(logits, clean)
    assert with_tile.item() == pytest.approx(expected.item(), rel=1e-6)
    assert with_tile.item() > without.item()


def test_per_image_dice_weighs_a_missed_small_defect_as_much_as_a_missed_big_one() -> None:
    from mtdefect.model.losses import PerImageDiceLoss

    target = torch.zeros((2, 1, 32, 32))
    target[0, 0, :, :24] = 1.0  # a big defect, found
    target[1, 0, 14:17, 14:17] = 1.0  # a 9 px defect, missed
    logits = torch.where(target.bool(), HIGH, LOW)
    logits[1] = LOW
    import segmentation_models_pytorch as smp

    pooled = smp.losses.DiceLoss("binary", from_logits=True)(logits, target).item()
    per_image = PerImageDiceLoss()(logits, target).item()
    assert pooled < 0.02  # 9 missed px out of ~780: the batch-pooled Dice barely notices
    assert per_image == pytest.approx(0.5, abs=0.05)  # one of two defective crops entirely missed
    # crops without a defect are left to BCE; a batch without any defect gives 0 and a gradient graph
    empty = torch.zeros((1, 1, 8, 8))
    loss = PerImageDiceLoss()(torch.zeros((1, 1, 8, 8), requires_grad=True), empty)
    assert loss.item() == 0.0 and loss.requires_grad
    assert isinstance(CombinedLoss(dice_per_image=True).terms[1][1], PerImageDiceLoss)
