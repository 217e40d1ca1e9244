"""Data integrity: the split manifest records the archive's sha256 and every image's sha256, and
both agree with hashlib on the original bytes (the real archive when present, else a synthetic one).
No pair from the archive is lost on the way, and images are kept byte for byte."""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_ZIP, requires_dataset, write_synthetic_tree, zip_tree

MEMBER = re.compile(r"(?:^|/)(MT_[A-Za-z]+)/Imgs/([^/]+)\.(jpg|png)$", re.IGNORECASE)
MASKS_CHECKED = 60  # masks re-derived from the archive and compared, per archive (bounded)


def archive_members(path: Path) -> dict[tuple[str, str, str], zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        return {(m.group(1), m.group(2), m.group(3).lower()): info
                for info in zf.infolist() if (m := MEMBER.search(info.filename)) and not info.is_dir()}


def check_manifest_against_archive(archive: Path, work: Path) -> int:
    from mtdefect.data.source import load_dataset, read_summary
    from mtdefect.data.split import make_split, manifest_digest, read_manifest

    archive_sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    summary = load_dataset(str(archive), work / "tiles")
    records = make_split(work / "tiles", work / "split.csv")
    assert summary["archive_sha256"] == archive_sha == read_summary(work / "tiles")["archive_sha256"]
    assert read_manifest(work / "split.csv") == records, "the manifest does not read back as written"
    manifest_sha = hashlib.sha256((work / "split.csv").read_bytes()).hexdigest()
    assert manifest_digest(work / "split.csv") == manifest_sha

    members = archive_members(archive)
    pairs = {(c, s) for (c, s, ext) in members if ext == "jpg" and (c, s, "png") in members}
    assert {(r.class_name, Path(r.image).stem) for r in records} == pairs, "pairs lost or invented"
    assert len(records) == summary["images"] == len(pairs)
    rng = np.random.default_rng(0)
    mask_rows = set(rng.choice(len(records), size=min(MASKS_CHECKED, len(records)), replace=False).tolist())
    with zipfile.ZipFile(archive) as zf:
        for i, r in enumerate(records):
            assert r.archive_sha256 == archive_sha, r
            original = zf.read(members[(r.class_name, Path(r.image).stem, "jpg")])
            assert r.sha256 == hashlib.sha256(original).hexdigest(), f"{r.image}: hash is not the archive's"
            assert (work / "tiles" / r.image).read_bytes() == original, f"{r.image} was altered on unpacking"
            if i in mask_rows:
                png = zf.read(members[(r.class_name, Path(r.image).stem, "png")])
                source = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
                kept = np.asarray(Image.open(work / "tiles" / r.mask))
                binary = np.where(source > 127, 255, 0).astype(np.uint8)
                np.testing.assert_array_equal(kept, binary, err_msg=r.mask)
    return len(records)


def test_manifest_hashes_match_hashlib_on_a_synthetic_archive(tmp_path: Path) -> None:
    write_synthetic_tree(tmp_path / "src", per_class=4)
    archive = zip_tree(tmp_path / "src", tmp_path / "tiles.zip")
    assert check_manifest_against_archive(archive, tmp_path) == 24


@pytest.mark.slow
@pytest.mark.dataset
@requires_dataset
def test_manifest_hashes_match_hashlib_on_the_real_archive(tmp_path: Path) -> None:
    count = check_manifest_against_archive(SHARED_ZIP, tmp_path)
    assert count > 1000  # the shared copy holds 1,097 image/mask pairs


def test_manifest_is_independent_of_unpack_order_and_repeatable(tmp_path: Path) -> None:
    """Loading the same archive twice gives byte-identical dataset files and manifest (the data version)."""
    from mtdefect.data.source import load_dataset
    from mtdefect.data.split import make_split

    from tests.reliability.support import tree_hashes

    write_synthetic_tree(tmp_path / "src", per_class=3)
    archive = zip_tree(tmp_path / "src", tmp_path / "tiles.zip")
    for run in ("a", "b"):
        load_dataset(str(archive), tmp_path / run / "tiles")
        make_split(tmp_path / run / "tiles", tmp_path / run / "split.csv", seed=7)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
