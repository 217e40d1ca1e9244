"""Shared fixtures: synthetic tile archives (no shared data needed) and the real dataset when present."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from mtdefect.devtools.synthetic import CLASSES, TOP, synthetic_pair, write_synthetic_tree  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = Path(os.environ.get("MT_SHARED_ZIP", ROOT.parent / "shared" / "data" / "magnetic-tiles.zip"))

requires_dataset = pytest.mark.skipif(
    not SHARED_ZIP.exists(), reason=f"shared dataset not found at {SHARED_ZIP} (CI always has it)"
)


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


def head_model(per_image: bool = False, encoder: str = "tf_efficientnet_lite0") -> tuple[dict, ModelSettings]:  # noqa: F821
    """The project's network family at test size: a U-Net (EfficientNet-Lite0 with TF "same" padding
    unless ``encoder`` says otherwise) with the tile-class head and a small decoder; its net config and
    settings deciding by the head."""
    from mtdefect.inference import ModelSettings, PostprocessSettings, PreprocessSettings

    net_cfg = {
        "arch": "Unet",
        "encoder": encoder,
        "in_channels": 1,
        "classes": 1,
        "decoder_channels": [16, 16, 8, 8, 8],
        "tile_classes": len(CLASSES),
    }
    settings = ModelSettings(
        net=net_cfg,
        class_names=CLASSES,
        preprocess=PreprocessSettings(per_image=per_image),
        postprocess=PostprocessSettings(score_source="head", decision_threshold=0.5),
    )
    return net_cfg, settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``): tests of one file run on one worker, so
    a module's fixtures are built once; the service tests share their session-wide servers and trained
    model, so that whole folder is one group."""
    for item in items:
        path = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
        group = "service" if path.parts[0] == "service" else path.as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
