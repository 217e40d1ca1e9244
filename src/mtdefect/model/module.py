"""LightningModule: a segmentation net with an optional tile-class head, their losses, the optimiser
and schedule, and the validation numbers checkpoints are chosen by."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from mtdefect.inference.network import build_net, split_outputs
from mtdefect.inference.postprocess import defect_probability
from mtdefect.metrics import binary_auroc
from mtdefect.model.losses import CombinedLoss
from mtdefect.model.pretrained import load_pretrained, pretrained_source


def warmup_cosine(total_steps: int, epochs: int, warmup_epochs: int) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up over ``warmup_epochs`` (at most half the
    steps), then a cosine decay to 0 at ``total_steps``."""
    warmup = min(total_steps // 2, total_steps * warmup_epochs // max(epochs, 1))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return schedule


class SegmentationModule(pl.LightningModule):
    """Hyperparameters are plain dicts and lists (saved with the checkpoint, readable with
    ``weights_only=True``).

    ``tile_classes``: the class names the tile head predicts, one of them ``free_class`` (no defect);
    empty: no head. The head's loss is cross-entropy on each crop's class (the tile's class when the
    crop holds defect pixels, else ``free_class``) weighted by ``head["weight"]``."""

    def __init__(
        self,
        arch: str = "Unet",
        encoder: str = "resnet18",
        pretrained: bool | str = "none",
        decoder_channels: Sequence[int] | None = (256, 128, 64, 32, 16),
        in_channels: int = 1,
        tile_classes: Sequence[str] = (),
        free_class: str = "MT_Free",
        head: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        head = {"stages": 2, "dropout": 0.2, "weight": 0.5, **(head or {})}
        self.class_names = tuple(tile_classes)
        if self.class_names and free_class not in self.class_names:
            raise ValueError(
                f"tile_classes {list(self.class_names)} must include the free class {free_class!r}"
            )
        self.free_index = self.class_names.index(free_class) if self.class_names else -1
        self.head_weight = float(head["weight"]) if self.class_names else 0.0
        self.net_config: dict[str, Any] = {
            "arch": arch,
            "encoder": encoder,
            "in_channels": in_channels,
            "classes": 1,
            "decoder_channels": None if decoder_channels is None else [int(c) for c in decoder_channels],
            "tile_classes": len(self.class_names),
            "head_stages": int(head["stages"]),
            "head_dropout": float(head["dropout"]),
        }
        self.net = build_net(**self.net_config)
        self.pretrained_report = load_pretrained(
            self.net, encoder, pretrained_source(pretrained), in_channels
        )
        self.loss_fn = CombinedLoss(**(loss or {}))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._val_counts = torch.zeros(3, dtype=torch.long)
        self._val_tiles: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pixel logits, tile logits or None)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return split_outputs(self.net(x))

    def head_loss(self, tile_logits: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor | None:
        if tile_logits is None or labels is None or not self.head_weight:
            return None
        return F.cross_entropy(tile_logits.float(), labels.long())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, tile_logits = self(batch["image"])
        loss = self.loss_fn(logits.float(), batch["mask"])
        head = self.head_loss(tile_logits, batch.get("label"))
        if head is not None:
            self.log(
                "train/head_loss", head, on_step=False, on_epoch=True, batch_size=len(logits), sync_dist=True
            )
            loss = loss + self.head_weight * head
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(logits),
            sync_dist=True,
        )  # DDP: the mean over ranks, not rank 0's share
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(3, dtype=torch.long, device=self.device)
        self._val_tiles = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, tile_logits = self(batch["image"])
        logits = logits.float()
        valid = batch["valid"]
        target = batch["mask"]
        # padding: confidently "no defect", so no loss term (the tile score's included) sees it
        loss = self.loss_fn(logits.masked_fill(~valid, -30.0), target)
        head = self.head_loss(tile_logits, batch.get("label"))
        if head is not None:
            loss = loss + self.head_weight * head
            self._val_tiles.append((tile_logits.float().detach(), batch["label"].detach()))
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
        selection = dice.float()
        if self._val_tiles:  # rank 0's share under DDP; single-device runs see every tile
            logits = torch.cat([z for z, _ in self._val_tiles]).cpu()
            labels = torch.cat([lab for _, lab in self._val_tiles]).cpu()
            defective = labels != self.free_index
            auroc = binary_auroc(defect_probability(logits.numpy(), self.free_index), defective.numpy())
            accuracy = (logits.argmax(1) == labels).float().mean()
            self.log(
                "val/head_auroc", float(0.0 if math.isnan(auroc) else auroc), prog_bar=True, sync_dist=False
            )
            self.log("val/class_accuracy", accuracy, sync_dist=False)
            selection = 0.5 * (selection + float(0.0 if math.isnan(auroc) else auroc))
        # what checkpoints are chosen by: Dice, averaged with the head's AUROC when there is a head
        self.log("val/selection", selection, sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        schedule = warmup_cosine(total, epochs, self.hparams.warmup_epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
