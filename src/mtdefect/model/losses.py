"""Segmentation losses: weighted sums of smp's losses, chosen by config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tile_scores(probability: torch.Tensor, window: int) -> torch.Tensor:
    """(N, 1, H, W) probabilities → (N,) highest mean over any ``window``² window inside the map:
    ``inference.postprocess.image_score`` in torch (differentiable, batched, on any device)."""
    window = min(window, *probability.shape[-2:])
    if window > 1:
        probability = F.avg_pool2d(probability, window, stride=1)
    return probability.flatten(1).amax(1)


class TileScoreLoss(nn.Module):
    """Binary cross-entropy on the *tile score*, the number the service decides with.

    The score is the highest mean probability over any ``window`` × ``window`` window
    (``inference.postprocess.image_score``); the label is whether the crop holds any defect pixel.
    Pixel losses barely notice a confident blob on a defect-free crop (a few hundred pixels out of
    ~400k in a batch), yet that blob alone raises a false alarm. This term charges it per crop, and
    its gradient goes to exactly the window that would fire. The pooling runs over valid windows only
    (``image_score`` clips the window at the border instead: the same number away from the edges).
    """

    def __init__(self, window: int = 5) -> None:
        super().__init__()
        self.window = window

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score = tile_scores(torch.sigmoid(logits.float()), self.window).clamp(1e-6, 1 - 1e-6)
        label = target.flatten(1).amax(1).float()
        return F.binary_cross_entropy(score, label)


class PerImageDiceLoss(nn.Module):
    """Soft Dice computed per crop, averaged over the crops that hold a defect.

    smp's ``DiceLoss("binary")`` pools the whole batch into one ratio, so a 100-pixel blowhole weighs
    nothing beside a 20,000-pixel fray in the same batch. Here every defective crop weighs the same,
    whatever its defect's size; crops without a defect are left to the pixel BCE (a per-crop Dice of
    an empty truth can only push every pixel to zero)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probability = torch.sigmoid(logits.float()).flatten(1)
        truth = target.float().flatten(1)
        holds_defect = truth.sum(1) > 0
        if not holds_defect.any():
            return logits.sum() * 0.0  # keeps the graph; nothing to measure
        probability, truth = probability[holds_defect], truth[holds_defect]
        intersection = (probability * truth).sum(1)
        dice = (2 * intersection + self.smooth) / (probability.sum(1) + truth.sum(1) + self.smooth)
        return (1 - dice).mean()


class CombinedLoss(nn.Module):
    """``bce * BCEWithLogits + dice * Dice + focal * Focal + tversky * Tversky + lovasz * Lovasz
    + tile * TileScoreLoss(tile_window)``; a zero weight leaves a term out. ``dice_per_image``:
    the Dice term is ``PerImageDiceLoss`` (each defective crop weighs the same) instead of smp's
    batch-pooled Dice."""

    def __init__(
        self,
        bce: float = 1.0,
        dice: float = 1.0,
        focal: float = 0.0,
        tversky: float = 0.0,
        lovasz: float = 0.0,
        pos_weight: float | None = None,
        tile: float = 0.0,
        tile_window: int = 5,
        dice_per_image: bool = False,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.terms: list[tuple[float, nn.Module]] = []
        if bce:
            weight = torch.tensor([pos_weight]) if pos_weight else None
            self.terms.append((bce, nn.BCEWithLogitsLoss(pos_weight=weight)))
        if dice:
            pooled = smp.losses.DiceLoss("binary", from_logits=True)
            self.terms.append((dice, PerImageDiceLoss() if dice_per_image else pooled))
        if focal:
            self.terms.append((focal, smp.losses.FocalLoss("binary")))
        if tversky:
            self.terms.append((tversky, smp.losses.TverskyLoss("binary", alpha=0.3, beta=0.7)))
        if lovasz:
            self.terms.append((lovasz, smp.losses.LovaszLoss("binary")))
        if tile:
            self.terms.append((tile, TileScoreLoss(tile_window)))
        if not self.terms:
            raise ValueError("every loss weight is zero")
        self._modules_list = nn.ModuleList([m for _, m in self.terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(weight * fn(logits, target) for weight, fn in self.terms)
