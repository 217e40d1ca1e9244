"""Shared fixtures: synthetic tile archives (no shared data needed) and the real dataset when present."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = Path(os.environ.get("MT_SHARED_ZIP", ROOT.parent / "shared" / "data" / "magnetic-tiles.zip"))
CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven")
TOP = "Magnetic-tile-defect-datasets.-master"

requires_dataset = pytest.mark.skipif(
    not SHARED_ZIP.exists(), reason=f"shared dataset not found at {SHARED_ZIP} (CI always has it)"
)


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
    """A folder laid out like the archive: <TOP>/MT_<Class>/Imgs/<stem>.jpg + .png."""
    for ci, cls in enumerate(CLASSES):
        folder = root / TOP / cls / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, mask = synthetic_pair(ci * 100 + i, defective=cls != "MT_Free")
            (folder / f"exp{ci}_num_{i}.jpg").write_bytes(img)
            (folder / f"exp{ci}_num_{i}.png").write_bytes(mask)
    (root / TOP / "README.md").write_text("synthetic")
    return root / TOP


def zip_tree(tree_parent: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(tree_parent.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(tree_parent).as_posix())
    return zip_path


@pytest.fixture
def synthetic_tree(tmp_path: Path) -> Path:
    """The archive's top folder (``<tmp>/src/<TOP>``) with 6 pairs per class."""
    return write_synthetic_tree(tmp_path / "src")


@pytest.fixture
def synthetic_zip(tmp_path: Path, synthetic_tree: Path) -> Path:
    return zip_tree(synthetic_tree.parent, tmp_path / "tiles.zip")


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A loaded dataset folder + split manifest built from synthetic tiles (session-wide, read-only)."""
    from mtdefect.data.source import load_dataset
    from mtdefect.data.split import make_split

    base = tmp_path_factory.mktemp("synthetic")
    write_synthetic_tree(base / "src", per_class=8)
    load_dataset(str(base / "src"), base / "tiles")
    make_split(base / "tiles", base / "split.csv", 0.25, 0.25, seed=0)
    return base / "tiles", base / "split.csv"
