"""LightningModule: a segmentation net, its loss, its optimiser and schedule, pooled Dice on val."""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from mtdefect.model.losses import CombinedLoss
from mtdefect.model.net import build_net


class SegmentationModule(pl.LightningModule):
    """Hyperparameters are plain dicts (saved with the checkpoint, readable with weights_only=True)."""

    def __init__(
        self,
        arch: str = "Unet",
        encoder: str = "resnet18",
        pretrained: bool = False,
        decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
        in_channels: int = 1,
        loss: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net_config: dict[str, Any] = {
            "arch": arch,
            "encoder": encoder,
            "pretrained": pretrained,
            "in_channels": in_channels,
            "classes": 1,
            "decoder_channels": [int(c) for c in decoder_channels],
        }
        self.net = build_net(**self.net_config)
        self.loss_fn = CombinedLoss(**(loss or {}))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._val_counts = torch.zeros(3, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss_fn(logits.float(), batch["mask"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits),
                 sync_dist=True)  # DDP: the mean over ranks, not rank 0's share
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(3, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"]).float()
        valid = batch["valid"]
        target = batch["mask"]
        # padding: confidently "no defect", so no loss term (the tile score's included) sees it
        loss = self.loss_fn(logits.masked_fill(~valid, -30.0), target)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=len(logits), sync_dist=True)
        pred = (logits > 0) & valid
        truth = target.bool() & valid
        tp = (pred & truth).sum()
        self._val_counts += torch.stack([tp, pred.sum() - tp, truth.sum() - tp])

    def on_validation_epoch_end(self) -> None:
        counts = self.all_gather(self._val_counts)
        if counts.dim() > 1:
            counts = counts.sum(0)
        tp, fp, fn = counts.double()
        dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else torch.tensor(1.0)
        iou = tp / (tp + fp + fn) if (tp + fp + fn) > 0 else torch.tensor(1.0)
        self.log("val/dice", dice.float(), prog_bar=True, sync_dist=False)
        self.log("val/iou", iou.float(), sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup = min(total // 2, total * self.hparams.warmup_epochs // epochs)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
