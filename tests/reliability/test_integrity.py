"""Data integrity: the split manifest records the archive's sha256 and every image's sha256, and
both agree with hashlib on the original bytes (the real archive when present, else a synthetic one).
No pair from the archive is lost on the way, and images are kept byte for byte."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_ZIP, requires_dataset, write_synthetic_tree, zip_tree

MEMBER = re.compile(r"(?:^|/)(MT_[A-Za-z]+)/Imgs/([^/]+)\.(jpg|png)$", re.IGNORECASE)
MASKS_CHECKED = 60  # masks re-derived from the archive and compared, per archive (bounded)


def archive_members(path: Path) -> dict[tuple[str, str, str], zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        return {
            (m.group(1), m.group(2), m.group(3).lower()): info
            for info in zf.infolist()
            if (m := MEMBER.search(info.filename)) and not info.is_dir()
        }


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


def zip_in_order(tree_parent: Path, zip_path: Path, order: str) -> list[str]:
    """The same files as ``zip_tree``, stored in the given member order; returns that order."""
    files = sorted(p for p in tree_parent.rglob("*") if p.is_file())
    if order == "reversed":
        files.reverse()
    elif order == "shuffled":
        files = [files[i] for i in np.random.default_rng(3).permutation(len(files))]
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in files:
            zf.write(file, file.relative_to(tree_parent).as_posix())
    with zipfile.ZipFile(zip_path) as zf:
        return [info.filename for info in zf.infolist()]


def test_manifest_is_independent_of_unpack_order_and_repeatable(tmp_path: Path) -> None:
    """The same pairs stored in three different member orders (sorted, reversed, shuffled), and the
    sorted archive loaded twice: byte-identical dataset files, and manifests that differ only in the
    archive's own sha256 (each archive's bytes differ, by construction)."""
    from mtdefect.data.source import SUMMARY_FILE, load_dataset
    from mtdefect.data.split import make_split, read_manifest
    from tests.reliability.support import tree_hashes

    write_synthetic_tree(tmp_path / "src", per_class=3)
    orders = {}
    for order in ("sorted", "reversed", "shuffled"):
        orders[order] = zip_in_order(tmp_path / "src", tmp_path / f"{order}.zip", order)
    assert orders["reversed"] == orders["sorted"][::-1] and orders["shuffled"] != orders["sorted"]
    assert sorted(orders["shuffled"]) == sorted(orders["sorted"]), "the same members, only the order differs"

    runs = {"sorted": "sorted", "sorted again": "sorted", "reversed": "reversed", "shuffled": "shuffled"}
    manifests, datasets = {}, {}
    for run, order in runs.items():
        out = tmp_path / run.replace(" ", "_")
        summary = load_dataset(str(tmp_path / f"{order}.zip"), out / "tiles")
        records = make_split(out / "tiles", out / "split.csv", seed=7)
        assert {r.archive_sha256 for r in records} == {summary["archive_sha256"]}
        manifests[run] = [replace(r, archive_sha256="") for r in read_manifest(out / "split.csv")]
        datasets[run] = {k: v for k, v in tree_hashes(out / "tiles").items() if k != SUMMARY_FILE}
    assert len(datasets["sorted"]) == 6 * 3 * 2, "every pair unpacked (image + mask)"
    for run in runs:
        assert datasets[run] == datasets["sorted"], f"{run}: dataset files differ"
        assert manifests[run] == manifests["sorted"], f"{run}: manifest rows differ"
    # the same archive twice: the whole manifest file, archive hash included, is byte-identical
    assert tree_hashes(tmp_path / "sorted") == tree_hashes(tmp_path / "sorted_again")
