"""Data load: zip, directory, corrupt zip, zip-slip, image without mask, checksum mismatch."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtdefect.data.source import DataSourceError, load_dataset, read_summary
from tests.conftest import CLASSES, TOP


def assert_dataset(out: Path, per_class: int = 6) -> None:
    summary = read_summary(out)
    assert summary["classes"] == {c: per_class for c in CLASSES}
    masks = sorted(out.glob("MT_*/*.png"))
    assert len(masks) == per_class * len(CLASSES)
    for m in masks:
        values = np.unique(np.asarray(Image.open(m)))
        assert set(values.tolist()) <= {0, 255}, f"{m} not binarised: {values}"
        assert m.with_suffix(".jpg").exists()
    assert not list(out.parent.glob(f".{out.name}.staging-*")), "staging folder left behind"


def test_load_from_zip(synthetic_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    digest = hashlib.sha256(synthetic_zip.read_bytes()).hexdigest()
    summary = load_dataset(str(synthetic_zip), out, sha256=digest)
    assert summary["archive_sha256"] == digest
    assert_dataset(out)


def test_load_from_directory(synthetic_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    load_dataset(str(synthetic_tree.parent), out)
    assert_dataset(out)
    # the images are the original bytes, untouched
    src = synthetic_tree / "MT_Crack" / "Imgs" / "exp2_num_0.jpg"
    assert (out / "MT_Crack" / "exp2_num_0.jpg").read_bytes() == src.read_bytes()


def test_soft_mask_edges_are_binarised_at_127(tmp_path: Path) -> None:
    folder = tmp_path / "src" / TOP / "MT_Blowhole" / "Imgs"
    folder.mkdir(parents=True)
    mask = np.array([[0, 1, 127, 128, 254, 255] * 2] * 10, dtype=np.uint8)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "a.jpg")
    Image.fromarray(mask).save(folder / "a.png")
    load_dataset(str(tmp_path / "src"), tmp_path / "out")
    got = np.asarray(Image.open(tmp_path / "out" / "MT_Blowhole" / "a.png"))
    assert got[0].tolist() == [0, 0, 0, 255, 255, 255] * 2


def _expect_failure_without_output(source: str, out: Path, match: str, **kwargs) -> None:
    with pytest.raises(DataSourceError, match=match):
        load_dataset(source, out, **kwargs)
    assert not out.exists(), "a failed load must leave no output"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "leftover staging"


def test_corrupt_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    _expect_failure_without_output(str(bad), tmp_path / "tiles", "not a readable zip")


def test_truncated_zip(synthetic_zip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.zip"
    cut.write_bytes(synthetic_zip.read_bytes()[: synthetic_zip.stat().st_size // 2])
    _expect_failure_without_output(str(cut), tmp_path / "tiles", "zip")


@pytest.mark.parametrize("member", ["../evil/MT_Free/Imgs/x.jpg", "/abs/MT_Free/Imgs/x.jpg", "a/../../x.txt"])
def test_zip_slip_member_rejects_archive(synthetic_tree: Path, tmp_path: Path, member: str) -> None:
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(synthetic_tree.rglob("*.*")):
            zf.write(file, file.relative_to(synthetic_tree.parent).as_posix())
        zf.writestr(member, b"payload")
    _expect_failure_without_output(str(archive), tmp_path / "tiles", "escapes the target folder")
    assert not (tmp_path / "evil").exists()


def test_image_without_mask(synthetic_tree: Path, tmp_path: Path) -> None:
    (synthetic_tree / "MT_Fray" / "Imgs" / "exp3_num_1000.png").unlink()
    _expect_failure_without_output(
        str(synthetic_tree.parent), tmp_path / "tiles", "image without mask: MT_Fray/exp3_num_1000"
    )


def test_checksum_mismatch(synthetic_zip: Path, tmp_path: Path) -> None:
    _expect_failure_without_output(str(synthetic_zip), tmp_path / "tiles", "sha256 mismatch", sha256="0" * 64)


def test_missing_source_explains_env_var(tmp_path: Path) -> None:
    _expect_failure_without_output(str(tmp_path / "nope.zip"), tmp_path / "tiles", "MT_DATA_SOURCE")


def test_unreachable_url_one_line_error(tmp_path: Path) -> None:
    # port 9 on loopback: nothing listens, the connection is refused at once
    with pytest.raises(DataSourceError) as info:
        load_dataset("http://127.0.0.1:9/archive.zip", tmp_path / "tiles")
    message = str(info.value)
    assert "\n" not in message and "MT_DATA_SOURCE" in message and "cannot download" in message
    assert not (tmp_path / "tiles").exists()


def test_failed_reload_keeps_previous_dataset(synthetic_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    load_dataset(str(synthetic_zip), out)
    before = json.loads((out / "dataset.json").read_text())
    with pytest.raises(DataSourceError):
        load_dataset(str(synthetic_zip), out, sha256="f" * 64)
    assert json.loads((out / "dataset.json").read_text()) == before


def test_dataset_without_summary_is_refused(tmp_path: Path) -> None:
    (tmp_path / "half" / "MT_Free").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="not a complete dataset"):
        read_summary(tmp_path / "half")
