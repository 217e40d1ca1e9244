"""Torch datasets over the manifest. Images go through inference.preprocess, the one implementation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mtdefect.data.split import Record
from mtdefect.inference.preprocess import normalize, pad_to_stride, scale_image, scale_mask
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

    train=True: random ``crop_size`` crops (edge-padded when the image is smaller, exactly as
    inference pads), centred on a random defect pixel with probability ``defect_crop_p``, with
    flips and brightness/contrast jitter. train=False: the whole image padded to the stride, with a
    validity mask so padding never counts in metrics.
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
    ) -> None:
        self.records = records
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

    def is_defective(self, index: int) -> bool:
        return len(self.defect_pixels[index]) > 0

    def _crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        gray, mask = self.images[index], self.masks[index]
        size = self.crop_size
        height, width = gray.shape
        if height < size or width < size:  # pad like inference does: edge for image, 0 for mask
            ph, pw = max(size - height, 0), max(size - width, 0)
            gray = np.pad(gray, ((0, ph), (0, pw)), mode="edge")
            mask = np.pad(mask, ((0, ph), (0, pw)), mode="constant")
            height, width = gray.shape
        pixels = self.defect_pixels[index]
        if len(pixels) and torch.rand(()).item() < self.defect_crop_p:
            cy, cx = pixels[torch.randint(len(pixels), ()).item()]
            top = int(np.clip(cy - size // 2 + torch.randint(-size // 4, size // 4 + 1, ()).item(), 0, height - size))
            left = int(np.clip(cx - size // 2 + torch.randint(-size // 4, size // 4 + 1, ()).item(), 0, width - size))
        else:
            top = torch.randint(height - size + 1, ()).item()
            left = torch.randint(width - size + 1, ()).item()
        return gray[top : top + size, left : left + size], mask[top : top + size, left : left + size]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not self.train:
            gray, mask = self.images[index], self.masks[index]
            image = pad_to_stride(normalize(gray, self.preprocess), self.preprocess.stride)
            valid = np.zeros(image.shape, dtype=bool)
            valid[: gray.shape[0], : gray.shape[1]] = True
            target = np.zeros(image.shape, dtype=bool)
            target[: mask.shape[0], : mask.shape[1]] = mask
            return {
                "image": torch.from_numpy(np.ascontiguousarray(image))[None],
                "mask": torch.from_numpy(target)[None].float(),
                "valid": torch.from_numpy(valid)[None],
                "index": torch.tensor(index),
            }
        gray, mask = self._crop(index)
        image = torch.from_numpy(normalize(np.ascontiguousarray(gray), self.preprocess))[None]
        target = torch.from_numpy(np.ascontiguousarray(mask))[None].float()
        if self.flip:
            if torch.rand(()).item() < 0.5:
                image, target = image.flip(-1), target.flip(-1)
            if torch.rand(()).item() < 0.5:
                image, target = image.flip(-2), target.flip(-2)
        if self.jitter > 0:
            contrast = 1.0 + (torch.rand(()).item() * 2 - 1) * self.jitter
            brightness = (torch.rand(()).item() * 2 - 1) * self.jitter / self.preprocess.std
            image = image * contrast + brightness
        return {"image": image.contiguous(), "mask": target.contiguous()}
