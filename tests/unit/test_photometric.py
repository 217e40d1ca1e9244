"""Photometric augmentation (mtdefect.data.photometric): off changes nothing and draws nothing; the
gamma curve keeps a crop's order and its tile's scale; the illumination ramp is a plane of bounded
slope; in the datamodule it changes pixels only, never masks or labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtdefect.data.datamodule import TileDataModule
from mtdefect.data.photometric import photometric
from mtdefect.devtools.synthetic import CLASSES
from mtdefect.inference import PreprocessSettings
from mtdefect.inference.preprocess import image_stats, normalize


def tiles(n: int = 6, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised crops of textured tiles (each its whole tile) and their (mean, std)."""
    rng = np.random.default_rng(0)
    settings = PreprocessSettings(per_image=True)
    crops, stats = [], []
    for i in range(n):
        gray = np.clip(60 + 20 * i + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
        crops.append(normalize(gray, settings))
        stats.append(image_stats(gray))
    return torch.from_numpy(np.stack(crops))[:, None], torch.tensor(stats, dtype=torch.float32)


def test_off_returns_the_crops_and_draws_no_random_number() -> None:
    images, stats = tiles()
    state = torch.random.get_rng_state()
    assert torch.equal(photometric(images, stats, 0.0, 0.0), images)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match=">= 0"):
        photometric(images, stats, -0.1, 0.0)


def test_gamma_keeps_each_crops_order_and_its_tiles_scale() -> None:
    images, stats = tiles()
    torch.manual_seed(0)
    out = photometric(images, stats, 0.3, 0.0)
    assert not torch.allclose(out, images)
    for before, after in zip(images.flatten(1), out.flatten(1)):
        order = torch.argsort(before)
        assert (after[order].diff() >= -1e-5).all()  # a gamma curve is increasing: no pixel overtakes another
        assert abs(after.mean().item()) < 0.25 and 0.75 < after.std().item() < 1.3  # still about N(0, 1)


def test_illumination_adds_a_plane_no_steeper_than_asked() -> None:
    images, stats = tiles()
    torch.manual_seed(1)
    added = photometric(images, stats, 0.0, 0.5) - images
    height, width = images.shape[-2:]
    for plane in added[:, 0]:
        rows, cols = plane.diff(dim=0), plane.diff(dim=1)
        assert torch.allclose(rows, rows[0, 0].expand_as(rows), atol=1e-5)  # the same step everywhere
        assert torch.allclose(cols, cols[0, 0].expand_as(cols), atol=1e-5)
        assert abs(plane.mean().item()) < 1e-4  # a ramp through the crop's centre: no overall shift
        assert abs(rows[0, 0].item()) * (height - 1) / 2 <= 0.5 + 1e-5
        assert abs(cols[0, 0].item()) * (width - 1) / 2 <= 0.5 + 1e-5
    assert added.abs().amax(dim=(1, 2, 3)).max() > 0.05  # it did something


@pytest.mark.parametrize("per_image", [True, False])
def test_the_datamodule_changes_pixels_only(synthetic_dataset: tuple[Path, Path], per_image: bool) -> None:
    dataset_dir, manifest = synthetic_dataset

    def batch(gamma: float, illumination: float) -> dict[str, torch.Tensor]:
        dm = TileDataModule(
            str(dataset_dir),
            str(manifest),
            {"stride": 32, "per_image": per_image},
            crop_size=32,
            batch_size=8,
            class_names=CLASSES,
            samples_per_epoch=64,
            gamma=gamma,
            illumination=illumination,
        )
        dm.setup("fit")
        torch.manual_seed(0)
        plans = next(iter(dm.train_dataloader()))
        return dm.on_after_batch_transfer(plans, 0)

    plain, lit = batch(0.0, 0.0), batch(0.3, 0.5)
    assert torch.equal(plain["mask"], lit["mask"]) and torch.equal(plain["label"], lit["label"])
    assert not torch.allclose(plain["image"], lit["image"])
    assert torch.isfinite(lit["image"]).all()
    with pytest.raises(ValueError, match="must be >= 0"):
        TileDataModule(str(dataset_dir), str(manifest), {"stride": 32}, illumination=-1.0)
