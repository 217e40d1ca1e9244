"""Training crops: plans drawn per item, pixels cut in one gather on the model's device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtdefect.data.datamodule import TileDataModule
from mtdefect.data.dataset import TileDataset, render_crops
from mtdefect.inference.preprocess import normalize
from mtdefect.inference.settings import PreprocessSettings


def test_normalize_is_the_same_for_arrays_and_tensors() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    settings = PreprocessSettings(mean=0.45, std=0.2)
    assert np.array_equal(normalize(gray, settings), normalize(torch.from_numpy(gray), settings).numpy())


def reference_crop(gray: np.ndarray, mask: np.ndarray, plan: dict, size: int, settings: PreprocessSettings):
    """What a crop means, written the slow obvious way on one tile."""
    h, w = gray.shape
    gray = np.pad(gray, ((0, max(size - h, 0)), (0, max(size - w, 0))), mode="edge")
    mask = np.pad(mask, ((0, max(size - h, 0)), (0, max(size - w, 0))))
    top, left = int(plan["top"]), int(plan["left"])
    image = normalize(gray[top : top + size, left : left + size], settings)
    target = mask[top : top + size, left : left + size].astype(np.float32)
    if plan["flip_h"]:
        image, target = image[:, ::-1], target[:, ::-1]
    if plan["flip_v"]:
        image, target = image[::-1], target[::-1]
    return image * float(plan["contrast"]) + float(plan["brightness"]), target


@pytest.fixture(scope="module")
def datamodule(synthetic_dataset: tuple[Path, Path]) -> TileDataModule:
    dataset_dir, manifest = synthetic_dataset
    dm = TileDataModule(
        str(dataset_dir),
        str(manifest),
        {"stride": 32, "mean": 0.5, "std": 0.25},
        crop_size=48,
        batch_size=8,
        defect_crop_p=1.0,
        samples_per_epoch=16,
        jitter=0.2,
    )
    dm.setup("fit")
    return dm


def test_rendered_crops_match_the_reference(datamodule: TileDataModule) -> None:
    torch.manual_seed(3)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"index", "top", "left", "flip_h", "flip_v", "contrast", "brightness"}
    assert batch["flip_h"].any() and not batch["flip_h"].all()  # both branches are exercised
    out = datamodule.on_after_batch_transfer(batch, 0)
    assert out["image"].shape == (8, 1, 48, 48) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (8, 1, 48, 48) and set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    ts = datamodule.train_set
    for b in range(8):
        plan = {k: v[b] for k, v in batch.items()}
        i = int(plan["index"])
        image, target = reference_crop(ts.images[i], ts.masks[i], plan, 48, ts.preprocess)
        np.testing.assert_allclose(out["image"][b, 0].numpy(), image, rtol=0, atol=1e-6)
        assert np.array_equal(out["mask"][b, 0].numpy(), target)
        if ts.is_defective(i):  # defect_crop_p = 1: every defective tile's crop shows its defect
            assert target.any()


def test_validation_batches_pass_through(datamodule: TileDataModule) -> None:
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    assert datamodule.on_after_batch_transfer(batch, 0) is batch


@pytest.mark.parametrize(
    "pad, expected",
    [
        ("edge", [[20, 20, 20, 10]] + [[40, 40, 40, 30]] * 3),
        ("zero", [[25, 25, 20, 10], [25, 25, 40, 30]] + [[25, 25, 25, 25]] * 2),  # the tile's mean
    ],
)
def test_small_tiles_are_padded_like_inference(pad: str, expected: list) -> None:
    """A tile smaller than the crop is padded bottom/right as inference pads (``zero``: the tile's
    mean, 0 once normalised; ``edge``: repeated), its mask with 0."""
    ds = TileDataset.__new__(TileDataset)  # no files needed: two tiles in memory
    ds.preprocess = PreprocessSettings(pad=pad)
    ds.crop_size = 4
    ds.images = [np.array([[10, 20], [30, 40]], np.uint8), np.full((3, 5), 7, np.uint8)]
    ds.masks = [np.array([[0, 1], [0, 0]], bool), np.zeros((3, 5), bool)]
    images, masks = ds.stacked()
    assert images.shape == masks.shape == (2, 4, 5)
    plan = {
        "index": torch.tensor([0]),
        "top": torch.tensor([0]),
        "left": torch.tensor([0]),
        "flip_h": torch.tensor([True]),
        "flip_v": torch.tensor([False]),
        "contrast": torch.tensor([1.0]),
        "brightness": torch.tensor([0.0]),
    }
    out = render_crops(images, masks, plan, 4, PreprocessSettings(mean=0.0, std=1.0 / 255))
    assert out["image"][0, 0].round().tolist() == expected
    assert out["mask"][0, 0].tolist() == [[0, 0, 1, 0]] + [[0, 0, 0, 0]] * 3


def test_per_image_normalisation_uses_the_whole_tiles_stats(synthetic_dataset: tuple[Path, Path]) -> None:
    """Training crops are normalised with their tile's mean/std (not the crop's), the same numbers
    inference computes on the whole image, so a crop's pixels equal the whole image's normalised pixels."""
    from mtdefect.inference.preprocess import image_stats, preprocess

    dataset_dir, manifest = synthetic_dataset
    settings = {"stride": 32, "per_image": True}
    dm = TileDataModule(
        str(dataset_dir),
        str(manifest),
        settings,
        crop_size=48,
        batch_size=8,
        defect_crop_p=1.0,
        samples_per_epoch=16,
        jitter=0.0,
        flip=False,
    )
    dm.setup("fit")
    torch.manual_seed(5)
    batch = next(iter(dm.train_dataloader()))
    out = dm.on_after_batch_transfer(batch, 0)
    ts = dm.train_set
    for b in range(8):
        plan = {k: v[b] for k, v in batch.items()}
        i, top, left = int(plan["index"]), int(plan["top"]), int(plan["left"])
        whole, _ = preprocess(ts.images[i], ts.preprocess)  # what the service feeds the network
        h, w = ts.images[i].shape
        if top + 48 <= h and left + 48 <= w:  # inside the tile: no padding differences
            np.testing.assert_allclose(
                out["image"][b, 0].numpy(), whole[0, 0, top : top + 48, left : left + 48], rtol=0, atol=1e-5
            )
        mean, std = image_stats(ts.images[i])
        image = normalize(
            np.pad(ts.images[i], ((0, max(48 - h, 0)), (0, max(48 - w, 0))), mode="edge")[
                top : top + 48, left : left + 48
            ],
            ts.preprocess,
            (mean, std),
        )
        np.testing.assert_allclose(out["image"][b, 0].numpy(), image, rtol=0, atol=1e-5)


def test_per_image_normalisation_edge_cases() -> None:
    from mtdefect.inference.preprocess import MIN_STD, image_stats

    settings = PreprocessSettings(per_image=True)
    flat = np.full((8, 8), 200, np.uint8)
    assert image_stats(flat) == pytest.approx((200 / 255, MIN_STD))
    assert np.allclose(normalize(flat, settings), 0.0, atol=1e-5)  # a flat tile is not blown up
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    assert abs(float(normalize(gray, settings).mean())) < 1e-5
    assert float(normalize(gray, settings).std()) == pytest.approx(1.0, rel=1e-4)
    # brightness-invariant: a uniformly brighter tile gives the same input (fixed stats would not)
    np.testing.assert_allclose(normalize(gray, settings), normalize(gray + 50, settings), atol=1e-5)
    fixed = PreprocessSettings()
    assert not np.allclose(normalize(gray, fixed), normalize(gray + 50, fixed), atol=1e-2)
    with pytest.raises(ValueError, match="stats"):
        normalize(torch.from_numpy(gray), settings)


def test_crop_labels_are_the_tiles_class_only_where_the_crop_shows_a_defect() -> None:
    from mtdefect.data.dataset import render_crops
    from mtdefect.inference.settings import PreprocessSettings

    images = torch.zeros((2, 16, 16), dtype=torch.uint8)
    masks = torch.zeros((2, 16, 16), dtype=torch.bool)
    masks[0, 2:4, 2:4] = True  # tile 0 (class 3): a defect at the top left; tile 1 (class 4 = free)
    plan = {
        "index": torch.tensor([0, 0, 1]),
        "top": torch.tensor([0, 8, 0]),
        "left": torch.tensor([0, 8, 0]),
        "flip_h": torch.tensor([False, False, True]),
        "flip_v": torch.tensor([False] * 3),
        "contrast": torch.ones(3),
        "brightness": torch.zeros(3),
    }
    batch = render_crops(
        images, masks, plan, 8, PreprocessSettings(), tile_labels=torch.tensor([3, 4]), free_label=4
    )
    assert batch["label"].tolist() == [3, 4, 4]  # the crop beside the defect is labelled free
    assert "label" not in render_crops(images, masks, plan, 8, PreprocessSettings())
