"""Stratified, seeded train/val/test split of a dataset folder, written as a manifest CSV."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

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


def assign_splits(
    samples: list[tuple[str, str]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_per_class: int | None = None,
) -> dict[tuple[str, str], str]:
    """Per class: shuffle the sorted list with a class-specific seeded RNG, then cut test | val | train.

    Each class with at least 3 images gets at least one val and one test image. ``max_per_class``
    keeps only the first N shuffled images of each class (for smoke tests on a small subset).
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
        n = len(chosen)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        for i, sample in enumerate(chosen):
            assignment[sample] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment


def make_split(
    dataset_dir: str | Path,
    manifest_path: str | Path,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    max_per_class: int | None = None,
) -> list[Record]:
    dataset_dir = Path(dataset_dir)
    summary = read_summary(dataset_dir)
    samples = list_samples(dataset_dir)
    assignment = assign_splits(samples, val_fraction, test_fraction, seed, max_per_class)
    records = [
        Record(
            image=f"{cls}/{stem}.jpg",
            mask=f"{cls}/{stem}.png",
            class_name=cls,
            split=split,
            sha256=sha256_file(dataset_dir / cls / f"{stem}.jpg"),
            mask_sha256=sha256_file(dataset_dir / cls / f"{stem}.png"),
            archive_sha256=summary.get("archive_sha256", ""),
        )
        for (cls, stem), split in sorted(assignment.items())
    ]
    write_manifest(records, manifest_path)
    return records


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
