"""Segmentation losses: weighted sums of smp's losses, chosen by config."""
from __future__ import annotations

import torch
from torch import nn


class CombinedLoss(nn.Module):
    """``bce * BCEWithLogits + dice * Dice + focal * Focal + tversky * Tversky + lovasz * Lovasz``;
    a zero weight leaves a term out."""

    def __init__(self, bce: float = 1.0, dice: float = 1.0, focal: float = 0.0, tversky: float = 0.0,
                 lovasz: float = 0.0, pos_weight: float | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.terms: list[tuple[float, nn.Module]] = []
        if bce:
            weight = torch.tensor([pos_weight]) if pos_weight else None
            self.terms.append((bce, nn.BCEWithLogitsLoss(pos_weight=weight)))
        if dice:
            self.terms.append((dice, smp.losses.DiceLoss("binary", from_logits=True)))
        if focal:
            self.terms.append((focal, smp.losses.FocalLoss("binary")))
        if tversky:
            self.terms.append((tversky, smp.losses.TverskyLoss("binary", alpha=0.3, beta=0.7)))
        if lovasz:
            self.terms.append((lovasz, smp.losses.LovaszLoss("binary")))
        if not self.terms:
            raise ValueError("every loss weight is zero")
        self._modules_list = nn.ModuleList([m for _, m in self.terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(weight * fn(logits, target) for weight, fn in self.terms)
