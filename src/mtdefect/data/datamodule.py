"""LightningDataModule: manifest + dataset folder → train/val/test loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from mtdefect.data.dataset import TileDataset, render_crops
from mtdefect.data.paste import DefectBank, paste_defects
from mtdefect.data.photometric import photometric
from mtdefect.data.split import read_manifest
from mtdefect.inference.settings import PreprocessSettings


class TileDataModule(pl.LightningDataModule):
    """``defect_fraction``: share of defective tiles in each training epoch (3 in 4 tiles of the
    archive are defect-free); None samples uniformly. ``class_balance``: within that share, every
    defect class is drawn equally often (Fray has 18 training tiles, Blowhole 67); otherwise tiles are
    drawn uniformly. ``samples_per_epoch`` defaults to the training-set size."""

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
        class_balance: bool = False,
        samples_per_epoch: int | None = None,
        flip: bool = True,
        jitter: float = 0.1,
        pin_memory: bool = False,
        class_names: list[str] | tuple[str, ...] = (),
        free_class: str = "MT_Free",
        paste_p: float = 0.0,
        paste_scale: tuple[float, float] | list[float] = (0.75, 1.25),
        gamma: float = 0.0,
        illumination: float = 0.0,
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
        self.class_balance = class_balance
        self.samples_per_epoch = samples_per_epoch
        self.flip = flip
        self.jitter = jitter
        self.pin_memory = pin_memory
        # the tile head's classes (training crops and validation tiles carry a "label"); () = none
        self.class_names = tuple(class_names)
        self.free_label = self.class_names.index(free_class) if free_class in self.class_names else -1
        # synthetic defects (mtdefect.data.paste): the share of crops from defect-free tiles that
        # get a real defect region of a training tile pasted in; 0 turns it off
        self.paste_p = float(paste_p)
        self.paste_scale = (float(paste_scale[0]), float(paste_scale[1]))
        self._bank: DefectBank | None = None
        # photometric augmentation (mtdefect.data.photometric): another lighting's gamma curve and a
        # brightness ramp across the crop; 0 turns each off
        if gamma < 0 or illumination < 0:
            raise ValueError(f"gamma and illumination must be >= 0, got {gamma} and {illumination}")
        self.gamma = float(gamma)
        self.illumination = float(illumination)
        self.train_set: TileDataset | None = None
        self.val_set: TileDataset | None = None
        # training tiles, their masks, (mean, std) and class index per tile, on the model's device
        self._stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._train_sampler: WeightedRandomSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = TileDataset(
                self.dataset_dir,
                read_manifest(self.manifest, "train"),
                self.preprocess,
                train=True,
                crop_size=self.crop_size,
                defect_crop_p=self.defect_crop_p,
                flip=self.flip,
                jitter=self.jitter,
                class_names=self.class_names,
            )
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = TileDataset(
                self.dataset_dir,
                read_manifest(self.manifest, "val"),
                self.preprocess,
                train=False,
                class_names=self.class_names,
            )

    def _sampler(self) -> WeightedRandomSampler | None:
        assert self.train_set is not None
        n = self.samples_per_epoch or len(self.train_set)
        flags = torch.tensor([self.train_set.is_defective(i) for i in range(len(self.train_set))])
        if self.defect_fraction is None or flags.all() or (~flags).all():
            return (
                WeightedRandomSampler(torch.ones(len(flags)), n, replacement=True)
                if self.samples_per_epoch
                else None
            )
        n_def = flags.sum().item()
        defect_share = torch.full((len(flags),), 1.0 / n_def, dtype=torch.double)
        if self.class_balance:
            classes = [record.class_name for record in self.train_set.records]
            defect_classes = Counter(c for c, flag in zip(classes, flags.tolist()) if flag)
            defect_share = torch.tensor(
                [
                    1.0 / (len(defect_classes) * defect_classes[c]) if defect_classes[c] else 0.0
                    for c in classes
                ],
                dtype=torch.double,
            )
        weights = torch.where(
            flags, self.defect_fraction * defect_share, (1 - self.defect_fraction) / (len(flags) - n_def)
        )
        return WeightedRandomSampler(weights.double(), n, replacement=True)

    def reweight_free_tiles(self, scores: dict[int, float], hard_share: float) -> None:
        """Redistribute the defect-free tiles' share of the draw: ``1 - hard_share`` of it uniformly,
        ``hard_share`` in proportion to ``scores`` ({training index: score ≥ 0}). Takes effect from
        the next epoch: the sampler draws from its weights tensor afresh each epoch."""
        sampler = self._train_sampler
        if sampler is None:
            raise RuntimeError(
                "reweight_free_tiles needs the weighted training sampler (defect_fraction set)"
            )
        weights = sampler.weights
        index = torch.tensor(sorted(scores))
        values = torch.tensor([max(float(scores[i]), 0.0) for i in index.tolist()], dtype=weights.dtype)
        total = weights[index].sum()
        share = torch.full_like(values, 1.0 / len(values))
        if values.sum() > 0:
            share = (1 - hard_share) * share + hard_share * values / values.sum()
        weights[index] = total * share

    def train_dataloader(self) -> DataLoader:
        sampler = self._sampler()
        self._train_sampler = sampler
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=sampler is None,
            num_workers=self.num_workers,
            drop_last=len(self.train_set) > self.batch_size,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        """Training batches arrive as crop plans; the pixels are cut here, on the model's device,
        from the training tiles, which are copied there once."""
        if "top" not in batch:
            return batch
        assert self.train_set is not None
        device = batch["top"].device
        if self._stacked is None or self._stacked[0].device != device:
            labels = torch.tensor(self.train_set.labels, dtype=torch.long)
            tensors = (*self.train_set.stacked(), self.train_set.tile_stats(), labels)
            self._stacked = tuple(t.to(device) for t in tensors)  # type: ignore[assignment]
        images, masks, stats, labels = self._stacked
        rendered = render_crops(
            images,
            masks,
            batch,
            self.crop_size,
            self.preprocess,
            stats,
            tile_labels=labels if self.class_names else None,
            free_label=self.free_label,
        )
        if self.paste_p > 0:
            clean_tiles = torch.tensor([not d for d in self.train_set.defective_flags()], device=device)
            rendered = paste_defects(
                rendered, clean_tiles[batch["index"]], self.defect_bank(), self.paste_p, self.paste_scale
            )
        if self.gamma > 0 or self.illumination > 0:
            if self.preprocess.per_image:
                crop_stats = stats[batch["index"]]
            else:
                fixed = torch.tensor([self.preprocess.mean, self.preprocess.std], device=device)
                crop_stats = fixed.expand(len(batch["index"]), 2)
            rendered["image"] = photometric(rendered["image"], crop_stats, self.gamma, self.illumination)
        return rendered

    def defect_bank(self) -> DefectBank:
        """The defect regions of the training tiles (built once; never from val or test)."""
        assert self.train_set is not None
        if self._bank is None:
            ts = self.train_set
            self._bank = DefectBank(ts.images, ts.masks, ts.labels, self.preprocess, max_side=self.crop_size)
        return self._bank

    def val_dataloader(self) -> DataLoader:
        # whole images of varied sizes: one per batch
        return DataLoader(
            self.val_set,
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
