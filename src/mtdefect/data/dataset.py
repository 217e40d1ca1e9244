"""Torch datasets over the manifest. Images go through inference.preprocess, the one implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mtdefect.data.split import Record
from mtdefect.inference.preprocess import image_stats, normalize, pad_to_stride, scale_image, scale_mask
from mtdefect.inference.settings import PreprocessSettings


def load_pair(root: Path, record: Record) -> tuple[np.ndarray, np.ndarray]:
    """(HxW uint8 image, HxW bool mask) at original resolution."""
    with Image.open(root / record.image) as img:
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
    with Image.open(root / record.mask) as m:
        mask = np.asarray(m.convert("L")) > 127
    return gray, mask


class TileDataset(Dataset):
    """Images and masks held in memory at the preprocessing scale.

    train=False: the whole image padded to the stride, with a validity mask so padding never counts
    in metrics. train=True: a *crop plan* per item (which tile, where, flips, brightness/contrast),
    a few numbers; ``render_crops`` turns a batch of plans into pixels on whatever device the model
    is on, from ``stacked()`` tiles that stay there (no per-step image copies to the GPU).
    Crops are ``crop_size`` squares (tiles smaller than that are edge-padded, exactly as inference
    pads), centred on a random defect pixel with probability ``defect_crop_p``.
    """

    def __init__(
        self,
        root: str | Path,
        records: list[Record],
        preprocess: PreprocessSettings,
        train: bool,
        crop_size: int = 256,
        defect_crop_p: float = 0.8,
        flip: bool = True,
        jitter: float = 0.1,
        class_names: tuple[str, ...] = (),
    ) -> None:
        self.root = Path(root)
        self.records = records
        self.class_names = tuple(class_names)
        unknown = sorted({r.class_name for r in records} - set(self.class_names)) if self.class_names else []
        if unknown:
            raise ValueError(
                f"the manifest has classes {unknown} outside the configured {list(self.class_names)}"
            )
        # each tile's class index (-1 without class names): the tile head's target
        self.labels = [self.class_names.index(r.class_name) if self.class_names else -1 for r in records]
        self.preprocess = preprocess
        self.train = train
        self.crop_size = crop_size
        self.defect_crop_p = defect_crop_p
        self.flip = flip
        self.jitter = jitter
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        for record in records:
            gray, mask = load_pair(Path(root), record)
            self.images.append(scale_image(gray, preprocess))
            self.masks.append(scale_mask(mask.astype(np.uint8) * 255, preprocess) > 127)
        self.defect_pixels = [np.argwhere(m) for m in self.masks]

    def __len__(self) -> int:
        return len(self.records)

    def native_image(self, index: int) -> np.ndarray:
        """Tile ``index`` as stored, before the preprocessing scale: what ``preprocess()`` takes (it
        scales itself; ``self.images`` are already scaled, and a factor applied twice compounds)."""
        return load_pair(self.root, self.records[index])[0]

    def is_defective(self, index: int) -> bool:
        return len(self.defect_pixels[index]) > 0

    def defective_flags(self) -> list[bool]:
        return [self.is_defective(i) for i in range(len(self.records))]

    def tile_stats(self) -> torch.Tensor:
        """(N, 2) float32: each tile's (mean, std) for per-image normalisation, of the unpadded tile."""
        return torch.tensor([image_stats(gray) for gray in self.images], dtype=torch.float32)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All tiles in one (N, H, W) uint8 tensor and their masks as (N, H, W) bool, H and W the
        largest sides (at least ``crop_size``); images padded bottom/right as inference pads them
        (``PreprocessSettings.pad``: ``zero`` fills with the tile's mean, 0 once normalised; ``edge``
        repeats the last row/column), masks zero-padded."""
        height = max(max(g.shape[0] for g in self.images), self.crop_size)
        width = max(max(g.shape[1] for g in self.images), self.crop_size)
        images = np.empty((len(self.images), height, width), dtype=np.uint8)
        masks = np.zeros((len(self.images), height, width), dtype=bool)
        for i, (gray, mask) in enumerate(zip(self.images, self.masks)):
            h, w = gray.shape
            spread = ((0, height - h), (0, width - w))
            if self.preprocess.pad == "zero":
                images[i] = np.pad(gray, spread, mode="constant", constant_values=round(float(gray.mean())))
            else:
                images[i] = np.pad(gray, spread, mode="edge")
            masks[i, :h, :w] = mask
        return torch.from_numpy(images), torch.from_numpy(masks)

    def crop_box(self, index: int) -> tuple[int, int]:
        """Top-left corner of a random crop inside the tile (padded up to ``crop_size``)."""
        size = self.crop_size
        height, width = (max(side, size) for side in self.images[index].shape)
        pixels = self.defect_pixels[index]
        if len(pixels) and torch.rand(()).item() < self.defect_crop_p:
            cy, cx = pixels[torch.randint(len(pixels), ()).item()]
            top = int(
                np.clip(
                    cy - size // 2 + torch.randint(-size // 4, size // 4 + 1, ()).item(), 0, height - size
                )
            )
            left = int(
                np.clip(cx - size // 2 + torch.randint(-size // 4, size // 4 + 1, ()).item(), 0, width - size)
            )
        else:
            top = torch.randint(height - size + 1, ()).item()
            left = torch.randint(width - size + 1, ()).item()
        return top, left

    def crop_plan(self, index: int) -> dict[str, torch.Tensor]:
        top, left = self.crop_box(index)
        flip_h = self.flip and torch.rand(()).item() < 0.5
        flip_v = self.flip and torch.rand(()).item() < 0.5
        contrast, brightness = 1.0, 0.0
        if self.jitter > 0:
            contrast = 1.0 + (torch.rand(()).item() * 2 - 1) * self.jitter
            brightness = (torch.rand(()).item() * 2 - 1) * self.jitter / self.preprocess.std
        return {
            "index": torch.tensor(index),
            "top": torch.tensor(top),
            "left": torch.tensor(left),
            "flip_h": torch.tensor(flip_h),
            "flip_v": torch.tensor(flip_v),
            "contrast": torch.tensor(contrast, dtype=torch.float32),
            "brightness": torch.tensor(brightness, dtype=torch.float32),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.train:
            return self.crop_plan(index)
        gray, mask = self.images[index], self.masks[index]
        image = pad_to_stride(normalize(gray, self.preprocess), self.preprocess.stride, self.preprocess.pad)
        valid = np.zeros(image.shape, dtype=bool)
        valid[: gray.shape[0], : gray.shape[1]] = True
        target = np.zeros(image.shape, dtype=bool)
        target[: mask.shape[0], : mask.shape[1]] = mask
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "mask": torch.from_numpy(target)[None].float(),
            "valid": torch.from_numpy(valid)[None],
            "index": torch.tensor(index),
            "label": torch.tensor(self.labels[index]),
        }


def render_crops(
    images: torch.Tensor,
    masks: torch.Tensor,
    plan: dict[str, torch.Tensor],
    size: int,
    preprocess: PreprocessSettings,
    tile_stats: torch.Tensor | None = None,
    tile_labels: torch.Tensor | None = None,
    free_label: int = -1,
) -> dict[str, torch.Tensor]:
    """A batch of crop plans → {"image": (B, 1, size, size) float32, "mask": same, 0/1}, computed on
    the device of ``images`` by one gather: flips are reversed index ranges, the jitter is
    ``image * contrast + brightness`` after normalisation. ``tile_stats`` ((N, 2), on the same
    device): each tile's mean and std, for per-image normalisation. ``tile_labels`` ((N,) class
    indices): adds "label", the tile's class for a crop that holds defect pixels, else
    ``free_label`` (a crop beside the defect shows no defect)."""
    steps = torch.arange(size, device=images.device)
    rows = plan["top"][:, None] + torch.where(plan["flip_v"][:, None], size - 1 - steps, steps)
    cols = plan["left"][:, None] + torch.where(plan["flip_h"][:, None], size - 1 - steps, steps)
    where = (plan["index"][:, None, None], rows[:, :, None], cols[:, None, :])
    stats = None
    if preprocess.per_image:
        if tile_stats is None:
            raise ValueError("per-image normalisation needs tile_stats")
        chosen = tile_stats[plan["index"]]
        stats = (chosen[:, 0, None, None], chosen[:, 1, None, None])
    image = normalize(images[where], preprocess, stats)
    image = image * plan["contrast"][:, None, None] + plan["brightness"][:, None, None]
    crop_masks = masks[where]
    batch = {"image": image[:, None].contiguous(), "mask": crop_masks[:, None].float()}
    if tile_labels is not None:
        holds_defect = crop_masks.flatten(1).any(1)
        batch["label"] = torch.where(
            holds_defect, tile_labels[plan["index"]], torch.full_like(plan["index"], free_label)
        )
    return batch
