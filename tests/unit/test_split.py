"""Split: stratified, deterministic, disjoint; manifest columns and hashes."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

from mtdefect.data.split import (
    Record,
    assign_splits,
    capture_number,
    make_split,
    read_manifest,
    split_summary,
    tile_groups,
)

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


# three tiles per class, each photographed under several lightings (capture numbers a few dozen
# apart within a tile, thousands apart between tiles), plus one file name without a capture number
TILES = [
    (cls, f"exp{light}_num_{base + 17 * light}")
    for cls, bases in (("MT_Free", range(1000, 41000, 2000)), ("MT_Crack", (5000, 9000, 15000, 30000)))
    for base in bases
    for light in range(1, 7)
] + [("MT_Free", "odd_name")]


def test_capture_number_and_groups() -> None:
    assert capture_number("exp3_num_3710") == 3710 and capture_number("odd_name") is None
    crack = [t for t in TILES if t[0] == "MT_Crack"]
    groups = tile_groups(crack, max_gap=300)
    assert len(set(groups.values())) == 4
    assert groups[("MT_Crack", "exp1_num_5017")] == groups[("MT_Crack", "exp6_num_5102")]
    assert groups[("MT_Crack", "exp6_num_5102")] != groups[("MT_Crack", "exp1_num_9017")]
    assert len(set(tile_groups(crack, max_gap=None).values())) == len(crack)  # image by image


def test_grouped_split_never_divides_a_tile() -> None:
    split = assign_splits(TILES, 0.15, 0.15, seed=3, group_gap=300)
    by_tile: dict[tuple[str, int], set[str]] = {}
    for (cls, stem), s in split.items():
        number = capture_number(stem)
        by_tile.setdefault((cls, (number or 0) // 1000), set()).add(s)
    assert all(len(splits) == 1 for splits in by_tile.values())
    per_class = Counter((cls, s) for (cls, _), s in split.items())
    for cls in ("MT_Free", "MT_Crack"):  # every split still has each class
        assert min(per_class[(cls, s)] for s in ("train", "val", "test")) >= 6
    assert 18 <= per_class[("MT_Free", "test")] < 18 + 6  # whole groups until round(121 * 0.15) = 18
    # image by image, the same tiles straddle the splits
    loose = assign_splits(TILES, 0.15, 0.15, seed=3)
    crack_tiles: dict[int, set[str]] = {}
    for (cls, stem), s in loose.items():
        if cls == "MT_Crack":
            crack_tiles.setdefault((capture_number(stem) or 0) // 1000, set()).add(s)
    assert any(len(splits) > 1 for splits in crack_tiles.values())


def test_grouped_split_deterministic_and_keeps_a_training_group() -> None:
    shuffled = TILES[:]
    random.Random(5).shuffle(shuffled)
    split = assign_splits(TILES, 0.2, 0.2, seed=1, group_gap=300)
    assert split == assign_splits(shuffled, 0.2, 0.2, seed=1, group_gap=300)
    two_tiles = [t for t in TILES if t[0] == "MT_Crack"][:12]
    split = assign_splits(two_tiles, 0.45, 0.45, seed=0, group_gap=300)
    assert "train" in split.values()


def test_split_summary_counts_images_and_tiles() -> None:
    split = assign_splits(TILES, 0.15, 0.15, seed=3, group_gap=300)
    records = [Record(f"{c}/{stem}.jpg", f"{c}/{stem}.png", c, s, "") for (c, stem), s in split.items()]
    summary = split_summary(records, group_gap=300)
    crack = summary["MT_Crack"]
    assert sum(images for images, _ in crack.values()) == 24 and sum(g for _, g in crack.values()) == 4
    assert all(images == 6 * tiles for images, tiles in crack.values())  # whole tiles of 6 lightings
    assert summary["MT_Free"]["test"][1] >= 3
    loose = split_summary(records, group_gap=None)  # image by image: every image its own "tile"
    assert all(images == tiles for images, tiles in loose["MT_Crack"].values())
