"""Stratified, seeded train/val/test split of a dataset folder, written as a manifest CSV.

The archive photographs each physical tile several times, under up to six lighting setups
(``exp1_num_3667``, ``exp2_num_3696``, … ``exp6_num_3789``: the capture number grows by a few dozen
within a tile and jumps between tiles). Split image by image, the same tile lands in train and in
test under another light, and test scores measure recall of seen tiles. ``group_gap`` keeps each
tile's photographs together: within a class, images whose capture numbers follow each other by at
most ``group_gap`` form one group, and groups, not images, are assigned to splits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from mtdefect.data.source import read_summary
from mtdefect.fileio import sha256_file, write_text_atomic

COLUMNS = ("image", "mask", "class", "split", "sha256", "mask_sha256", "archive_sha256")


@dataclass(frozen=True)
class Record:
    image: str  # relative to the dataset folder
    mask: str
    class_name: str
    split: str
    sha256: str
    mask_sha256: str = ""
    archive_sha256: str = ""


def list_samples(dataset_dir: Path) -> list[tuple[str, str]]:
    """(class, stem) of every pair, sorted: the split never depends on filesystem order."""
    return sorted(
        (jpg.parent.name, jpg.stem)
        for jpg in Path(dataset_dir).glob("MT_*/*.jpg")
        if jpg.with_suffix(".png").exists()
    )


CAPTURE_NUMBER = re.compile(r"num_(\d+)$")


def capture_number(stem: str) -> int | None:
    """The capture number of an archive file name (``exp3_num_3710`` → 3710); None if it has none."""
    match = CAPTURE_NUMBER.search(stem)
    return int(match.group(1)) if match else None


def tile_groups(items: list[tuple[str, str]], max_gap: int | None) -> dict[tuple[str, str], int]:
    """Group index per sample of one class: consecutive capture numbers at most ``max_gap`` apart
    share a group (chained). Samples without a capture number, or ``max_gap`` None, stand alone."""
    numbered = sorted((n, item) for item in items if (n := capture_number(item[1])) is not None)
    groups: dict[tuple[str, str], int] = {}
    count = 0
    previous: int | None = None
    for number, item in numbered:
        if max_gap is None or previous is None or number - previous > max_gap:
            count += 1
        groups[item] = count
        previous = number
    for item in sorted(items):
        if item not in groups:
            count += 1
            groups[item] = count
    return groups


LIGHTING = re.compile(r"^exp(\d+)_")


def lighting_index(stem: str) -> int | None:
    """The lighting setup of an archive file name (``exp3_num_3710`` → 3); None if it has none."""
    match = LIGHTING.match(stem)
    return int(match.group(1)) if match else None


def physical_tiles(items: list[tuple[str, str]], max_gap: int | None) -> dict[tuple[str, str], str]:
    """A name per sample for the physical tile it shows, ``<group>.<k>``: a tile group
    (``tile_groups``) photographs its tile once per lighting in increasing lighting order, so a
    lighting index that does not increase along the capture numbers starts the next tile of the same
    group (a group of two tiles captured close together). Without lighting indices, the group."""
    groups = tile_groups(items, max_gap)
    ordered = sorted(items, key=lambda item: (groups[item], capture_number(item[1]) or 0, item[1]))
    names: dict[tuple[str, str], str] = {}
    previous: tuple[int, int | None] | None = None
    part = 0
    for item in ordered:
        light = lighting_index(item[1])
        if previous is None or previous[0] != groups[item]:
            part = 0
        elif light is not None and previous[1] is not None and light <= previous[1]:
            part += 1
        names[item] = f"{groups[item]}.{part}"
        previous = (groups[item], light)
    return names


def tile_names(samples: Sequence[tuple[str, str]], max_gap: int | None) -> list[str]:
    """The physical tile of each (class, image path) sample, ``<class>/<group>.<k>``
    (``physical_tiles`` within each class), in the order given."""
    keys = [(class_name, PurePosixPath(image).stem) for class_name, image in samples]
    by_class: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        by_class.setdefault(key[0], []).append(key)
    names: dict[tuple[str, str], str] = {}
    for class_name, items in by_class.items():
        names.update({k: f"{class_name}/{v}" for k, v in physical_tiles(items, max_gap).items()})
    return [names[k] for k in keys]


def assign_splits(
    samples: list[tuple[str, str]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_per_class: int | None = None,
    group_gap: int | None = None,
) -> dict[tuple[str, str], str]:
    """Per class: shuffle the sorted list with a class-specific seeded RNG, then cut test | val | train.

    With ``group_gap``, whole tile groups (``tile_groups``) are cut instead of single images: groups
    come in the order the shuffle first reaches one of their images, and test, then val, take groups
    until they hold their share of the class's images. Each class with at least 3 groups gets at
    least one val and one test group; train always keeps at least one. ``max_per_class`` keeps only
    the first N shuffled images of each class (for smoke tests on a small subset), before grouping.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    by_class: dict[str, list[tuple[str, str]]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample[0], []).append(sample)
    assignment: dict[tuple[str, str], str] = {}
    for class_name, items in sorted(by_class.items()):
        class_seed = int(hashlib.sha256(f"{seed}:{class_name}".encode()).hexdigest()[:8], 16)
        order = np.random.default_rng(class_seed).permutation(len(items))
        chosen = [items[i] for i in order][: max_per_class or None]
        group_of = tile_groups(chosen, group_gap)  # group_gap None: every image its own group
        members: dict[int, list[tuple[str, str]]] = {}
        for sample in chosen:  # dicts keep insertion order: groups in the shuffle's order
            members.setdefault(group_of[sample], []).append(sample)
        n = len(chosen)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if len(members) >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        taken = {"test": 0, "val": 0, "train": 0}
        for index, group in enumerate(members.values()):
            train_still_empty = index == len(members) - 1 and taken["train"] == 0
            split = "train"
            if not train_still_empty and taken["test"] < n_test:
                split = "test"
            elif not train_still_empty and taken["val"] < n_val:
                split = "val"
            taken[split] += len(group)
            for sample in group:
                assignment[sample] = split
    return assignment


def make_split(
    dataset_dir: str | Path,
    manifest_path: str | Path,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    max_per_class: int | None = None,
    group_gap: int | None = None,
) -> list[Record]:
    dataset_dir = Path(dataset_dir)
    summary = read_summary(dataset_dir)
    samples = list_samples(dataset_dir)
    assignment = assign_splits(samples, val_fraction, test_fraction, seed, max_per_class, group_gap)
    writer = ManifestWriter(dataset_dir, list(assignment), summary.get("archive_sha256", ""))
    return writer.write(assignment, Path(manifest_path))


class ManifestWriter:
    """Writes split manifests of one dataset folder (the split stage's, cross-validation's folds),
    hashing each image and mask once."""

    def __init__(self, dataset_dir: Path, samples: list[tuple[str, str]], archive_sha256: str) -> None:
        self.archive_sha256 = archive_sha256
        self.digests = {
            s: (
                sha256_file(dataset_dir / s[0] / f"{s[1]}.jpg"),
                sha256_file(dataset_dir / s[0] / f"{s[1]}.png"),
            )
            for s in samples
        }

    def write(self, assignment: dict[tuple[str, str], str], path: Path) -> list[Record]:
        records = [
            Record(
                image=f"{cls}/{stem}.jpg",
                mask=f"{cls}/{stem}.png",
                class_name=cls,
                split=split,
                sha256=self.digests[(cls, stem)][0],
                mask_sha256=self.digests[(cls, stem)][1],
                archive_sha256=self.archive_sha256,
            )
            for (cls, stem), split in sorted(assignment.items())
        ]
        write_manifest(records, path)
        return records


def split_summary(records: list[Record], group_gap: int | None) -> dict[str, dict[str, tuple[int, int]]]:
    """Per class and split: (images, tile groups). How many distinct tiles each class's score rests on."""
    summary: dict[str, dict[str, tuple[int, int]]] = {}
    for class_name in sorted({r.class_name for r in records}):
        mine = [r for r in records if r.class_name == class_name]
        groups = tile_groups([(class_name, Path(r.image).stem) for r in mine], group_gap)
        summary[class_name] = {}
        for split in ("train", "val", "test"):
            members = [(class_name, Path(r.image).stem) for r in mine if r.split == split]
            summary[class_name][split] = (len(members), len({groups[m] for m in members}))
    return summary


def write_manifest(records: list[Record], path: str | Path) -> None:
    """Write the CSV through a temporary file and rename it into place (never half-written)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)  # \r\n line ends, as csv writes them: the data version hashes these bytes
    writer.writerow(COLUMNS)
    for r in records:
        writer.writerow((r.image, r.mask, r.class_name, r.split, r.sha256, r.mask_sha256, r.archive_sha256))
    write_text_atomic(path, buffer.getvalue())


def read_manifest(path: str | Path, split: str | None = None) -> list[Record]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = [
        Record(
            r["image"],
            r["mask"],
            r["class"],
            r["split"],
            r["sha256"],
            r.get("mask_sha256", ""),
            r.get("archive_sha256", ""),
        )
        for r in rows
    ]
    return [r for r in records if split is None or r.split == split]


def manifest_digest(path: str | Path) -> str:
    """The data version: sha256 of the manifest file."""
    return sha256_file(path)
