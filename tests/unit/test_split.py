"""Split: stratified, deterministic, disjoint; manifest columns and hashes."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

from mtdefect.data.split import assign_splits, make_split, read_manifest

SAMPLES = [
    (c, f"s{i:03d}")
    for c, n in (("MT_Free", 100), ("MT_Crack", 20), ("MT_Fray", 7), ("MT_Break", 3))
    for i in range(n)
]


def test_stratified_by_class() -> None:
    split = assign_splits(SAMPLES, 0.15, 0.15, seed=1)
    per_class = Counter((cls, s) for (cls, _), s in split.items())
    assert per_class[("MT_Free", "test")] == 15 and per_class[("MT_Free", "val")] == 15
    assert per_class[("MT_Crack", "test")] == 3 and per_class[("MT_Crack", "val")] == 3
    for cls in ("MT_Fray", "MT_Break"):  # small classes still reach every split
        assert (
            per_class[(cls, "test")] >= 1 and per_class[(cls, "val")] >= 1 and per_class[(cls, "train")] >= 1
        )


def test_deterministic_and_independent_of_input_order() -> None:
    shuffled = SAMPLES[:]
    random.Random(3).shuffle(shuffled)
    assert assign_splits(SAMPLES, 0.2, 0.2, seed=7) == assign_splits(shuffled, 0.2, 0.2, seed=7)
    assert assign_splits(SAMPLES, 0.2, 0.2, seed=7) != assign_splits(SAMPLES, 0.2, 0.2, seed=8)


def test_disjoint_and_complete() -> None:
    split = assign_splits(SAMPLES, 0.2, 0.2, seed=0)
    assert set(split) == set(SAMPLES)  # every sample exactly once (dict keys)
    assert set(split.values()) == {"train", "val", "test"}


def test_max_per_class_subset() -> None:
    split = assign_splits(SAMPLES, 0.25, 0.25, seed=0, max_per_class=4)
    counts = Counter(cls for cls, _ in split)
    assert counts == {"MT_Free": 4, "MT_Crack": 4, "MT_Fray": 4, "MT_Break": 3}


def test_manifest_round_trip(synthetic_dataset: tuple[Path, Path]) -> None:
    dataset_dir, manifest = synthetic_dataset
    records = read_manifest(manifest)
    assert len(records) == 48
    header = manifest.read_text().splitlines()[0]
    assert header == "image,mask,class,split,sha256,mask_sha256,archive_sha256"
    for r in records:
        assert hashlib.sha256((dataset_dir / r.image).read_bytes()).hexdigest() == r.sha256
        assert hashlib.sha256((dataset_dir / r.mask).read_bytes()).hexdigest() == r.mask_sha256
        assert (dataset_dir / r.mask).exists()
    again = make_split(dataset_dir, manifest.with_name("again.csv"), 0.25, 0.25, seed=0)
    assert manifest.with_name("again.csv").read_bytes() == manifest.read_bytes()
    assert len(again) == len(records)
