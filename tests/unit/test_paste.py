"""Synthetic defects: regions cut from training tiles only, pasted with their mask into crops of
defect-free tiles, labelled with their class; nothing changes when the option is off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtdefect.data.datamodule import TileDataModule
from mtdefect.data.paste import DefectBank, paste_defects, transform
from mtdefect.inference.settings import PreprocessSettings

CLASSES = ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven"]


def tiles() -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    rng = np.random.default_rng(0)
    images, masks, labels = [], [], []
    for label, box in [(2, (10, 30, 40, 44)), (4, None), (0, (50, 58, 20, 28))]:
        gray = rng.integers(100, 140, (80, 96), dtype=np.uint8)
        mask = np.zeros((80, 96), bool)
        if box:
            top, bottom, left, right = box
            mask[top:bottom, left:right] = True
            gray[mask] = 20  # a dark defect
        images.append(gray)
        masks.append(mask)
        labels.append(label)
    return images, masks, labels


def test_bank_cuts_each_defect_region_with_its_class() -> None:
    images, masks, labels = tiles()
    bank = DefectBank(images, masks, labels, PreprocessSettings(per_image=True), max_side=32)
    assert len(bank) == 2 and sorted(bank.by_label) == [0, 2]
    crack = bank.patches[bank.by_label[2][0]]
    assert int(crack.mask.sum()) == 20 * 4 and crack.alpha[crack.mask].min() == 1.0
    ring = crack.alpha[~crack.mask]
    assert ((ring > 0) & (ring < 1)).any() and float(crack.alpha[0].max()) < 0.1  # feathered, fading out
    assert crack.image[crack.mask].mean() < crack.background  # the defect is darker than around it
    image, mask, alpha = transform(crack, 16, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert max(image.shape) <= 16 and mask.any() and image.shape == mask.shape == alpha.shape


def test_paste_marks_the_mask_labels_the_crop_and_only_touches_receivers() -> None:
    images, masks, labels = tiles()
    bank = DefectBank(images, masks, labels, PreprocessSettings(per_image=True), max_side=32)
    batch = {
        "image": torch.zeros(4, 1, 32, 32),
        "mask": torch.zeros(4, 1, 32, 32),
        "label": torch.full((4,), 4),
    }
    before = {k: v.clone() for k, v in batch.items()}
    receives = torch.tensor([True, False, True, False])
    out = paste_defects(batch, receives, bank, 1.0, generator=torch.Generator().manual_seed(1))
    for i in (0, 2):
        assert out["mask"][i].sum() > 0 and out["label"][i].item() in (0, 2)
        changed = (out["image"][i] != 0).squeeze(0)
        assert changed.any()
        near = torch.nn.functional.max_pool2d(out["mask"][i][None], 15, 1, 7)[0, 0] > 0
        assert not (changed & ~near).any()  # only the pasted region and its feathered margin change
    for i in (1, 3):
        assert torch.equal(out["image"][i], before["image"][i]) and out["label"][i].item() == 4
    off = paste_defects({k: v.clone() for k, v in before.items()}, receives, bank, 0.0)
    assert all(torch.equal(off[k], before[k]) for k in before)


@pytest.mark.parametrize("paste_p", [0.0, 1.0])
def test_datamodule_pastes_into_clean_tiles_only(
    synthetic_dataset: tuple[Path, Path], paste_p: float
) -> None:
    dataset_dir, manifest = synthetic_dataset
    dm = TileDataModule(
        str(dataset_dir),
        str(manifest),
        {"stride": 32},
        crop_size=32,
        batch_size=8,
        class_names=CLASSES,
        paste_p=paste_p,
        samples_per_epoch=64,
    )
    dm.setup("fit")
    torch.manual_seed(0)
    plans = next(iter(dm.train_dataloader()))
    batch = dm.on_after_batch_transfer(plans, 0)
    free = torch.tensor([not d for d in dm.train_set.defective_flags()])[plans["index"]]
    assert free.any()
    has_defect = batch["mask"].flatten(1).any(1)
    if paste_p:
        assert has_defect[free].all()  # every clean crop got a defect, and its label says which
        assert (batch["label"][free] != dm.free_label).all()
        assert {p.label for p in dm.defect_bank().patches} <= set(range(len(CLASSES))) - {dm.free_label}
    else:
        assert not has_defect[free].any() and dm._bank is None
