"""Synthetic tiles laid out like the archive, for tests and benchmarks (no shared data needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven")
TOP = "Magnetic-tile-defect-datasets.-master"


def synthetic_pair(seed: int, defective: bool, size: tuple[int, int] = (72, 56)) -> tuple[bytes, bytes]:
    """A gray tile with texture and, if defective, a dark blob; its mask has soft edge values like the
    real ones."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.clip(rng.normal(140, 12, (h, w)), 0, 255)
    mask = np.zeros((h, w), dtype=np.uint8)
    if defective:
        cy, cx, r = rng.integers(12, h - 12), rng.integers(12, w - 12), rng.integers(4, 9)
        yy, xx = np.ogrid[:h, :w]
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        img[d <= r] = 40
        mask[d <= r] = 255
        mask[(d > r) & (d <= r + 1)] = 100  # soft edge: binarised away (<= 127)
    out_img, out_mask = io.BytesIO(), io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(out_img, format="JPEG", quality=95)
    Image.fromarray(mask).save(out_mask, format="PNG")
    return out_img.getvalue(), out_mask.getvalue()


def write_synthetic_tree(root: Path, per_class: int = 6) -> Path:
    """A folder laid out like the archive: <TOP>/MT_<Class>/Imgs/<stem>.jpg + .png. Each image is a
    tile of its own: capture numbers 1,000 apart, beyond the split's ``group_gap``."""
    for ci, cls in enumerate(CLASSES):
        folder = root / TOP / cls / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, mask = synthetic_pair(ci * 100 + i, defective=cls != "MT_Free")
            (folder / f"exp{ci}_num_{1000 * i}.jpg").write_bytes(img)
            (folder / f"exp{ci}_num_{1000 * i}.png").write_bytes(mask)
    (root / TOP / "README.md").write_text("synthetic")
    return root / TOP
