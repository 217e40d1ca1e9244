"""LightningDataModule: manifest + dataset folder → train/val/test loaders."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from mtdefect.data.dataset import TileDataset
from mtdefect.data.split import read_manifest
from mtdefect.inference.settings import PreprocessSettings


class TileDataModule(pl.LightningDataModule):
    """``defect_fraction``: share of defective tiles in each training epoch (3 in 4 tiles of the
    archive are defect-free); None samples uniformly. ``samples_per_epoch`` defaults to the
    training-set size."""

    def __init__(
        self,
        dataset_dir: str,
        manifest: str,
        preprocess: dict[str, Any],
        crop_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        defect_fraction: float | None = 0.5,
        defect_crop_p: float = 0.8,
        samples_per_epoch: int | None = None,
        flip: bool = True,
        jitter: float = 0.1,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.manifest = Path(manifest)
        self.preprocess = PreprocessSettings(**preprocess)
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.defect_fraction = defect_fraction
        self.defect_crop_p = defect_crop_p
        self.samples_per_epoch = samples_per_epoch
        self.flip = flip
        self.jitter = jitter
        self.pin_memory = pin_memory
        self.train_set: TileDataset | None = None
        self.val_set: TileDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = TileDataset(
                self.dataset_dir, read_manifest(self.manifest, "train"), self.preprocess, train=True,
                crop_size=self.crop_size, defect_crop_p=self.defect_crop_p, flip=self.flip, jitter=self.jitter,
            )
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = TileDataset(self.dataset_dir, read_manifest(self.manifest, "val"), self.preprocess, train=False)

    def _sampler(self) -> WeightedRandomSampler | None:
        assert self.train_set is not None
        n = self.samples_per_epoch or len(self.train_set)
        flags = torch.tensor([self.train_set.is_defective(i) for i in range(len(self.train_set))])
        if self.defect_fraction is None or flags.all() or (~flags).all():
            return WeightedRandomSampler(torch.ones(len(flags)), n, replacement=True) if self.samples_per_epoch else None
        n_def = flags.sum().item()
        weights = torch.where(flags, self.defect_fraction / n_def, (1 - self.defect_fraction) / (len(flags) - n_def))
        return WeightedRandomSampler(weights.double(), n, replacement=True)

    def train_dataloader(self) -> DataLoader:
        sampler = self._sampler()
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, shuffle=sampler is None,
            num_workers=self.num_workers, drop_last=len(self.train_set) > self.batch_size,
            persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        # whole images of varied sizes: one per batch
        return DataLoader(self.val_set, batch_size=1, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
