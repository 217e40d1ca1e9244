"""Grouped, class-stratified k-fold assignment: the manifests cross-validation trains and scores on.

Folds are made of tile groups (``split.tile_groups``: every photograph of one physical tile stays in
one fold), class by class, so each fold holds about 1/k of every class's groups. Fold ``i``'s manifest
is an ordinary split manifest: the held-out fold is ``test``, and the other folds are cut into
``train`` and an inner ``val`` slice of whole groups (checkpoint choice, head refit and calibration
all read ``val``; nothing reads ``test`` before the out-of-fold prediction).

Removing whole groups never merges or splits the remaining ones (a group is a maximal chain of
capture numbers at most ``group_gap`` apart), so the inner split sees the same groups.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mtdefect.data.source import read_summary
from mtdefect.data.split import ManifestWriter, Record, assign_splits, list_samples, tile_groups

Sample = tuple[str, str]  # (class folder, file stem)


def group_ids(samples: list[Sample], group_gap: int | None) -> dict[Sample, str]:
    """A name per sample for its tile group, unique across classes: ``MT_Crack/3``."""
    by_class: dict[str, list[Sample]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample[0], []).append(sample)
    named: dict[Sample, str] = {}
    for class_name, items in by_class.items():
        for sample, group in tile_groups(items, group_gap).items():
            named[sample] = f"{class_name}/{group}"
    return named


def assign_folds(samples: list[Sample], k: int, seed: int, group_gap: int | None) -> dict[Sample, int]:
    """Fold index (0..k-1) per sample. Per class, the groups are shuffled by a seeded class-specific
    RNG and each goes to the fold holding the fewest of that class's images so far (ties: the fold
    with fewer groups, then the lower index): folds balanced in images and stratified by class."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got k={k}")
    groups = group_ids(samples, group_gap)
    members: dict[str, list[Sample]] = {}
    for sample in sorted(samples):
        members.setdefault(groups[sample], []).append(sample)
    folds: dict[Sample, int] = {}
    for class_name in sorted({s[0] for s in samples}):
        names = sorted((g for g in members if g.split("/")[0] == class_name), key=_group_order)
        class_seed = int(hashlib.sha256(f"{seed}:folds:{class_name}".encode()).hexdigest()[:8], 16)
        order = np.random.default_rng(class_seed).permutation(len(names))
        images, count = [0] * k, [0] * k
        for index in order:
            group = names[index]
            fold = min(range(k), key=lambda f: (images[f], count[f], f))
            images[fold] += len(members[group])
            count[fold] += 1
            for sample in members[group]:
                folds[sample] = fold
    return folds


def _group_order(name: str) -> tuple[str, int]:
    class_name, number = name.rsplit("/", 1)
    return class_name, int(number)


def fold_assignment(
    samples: list[Sample],
    fold: int,
    k: int,
    seed: int,
    group_gap: int | None,
    val_fraction: float,
) -> dict[Sample, str]:
    """Fold ``fold``'s split of every sample: its held-out fold is ``test``; the rest is cut into
    ``train`` and ``val`` by whole groups (``split.assign_splits``, seeded per fold)."""
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} is outside 0..{k - 1}")
    folds = assign_folds(samples, k, seed, group_gap)
    held_out = [s for s in samples if folds[s] == fold]
    rest = [s for s in samples if folds[s] != fold]
    inner = assign_splits(rest, val_fraction, 0.0, seed * 1000 + fold, group_gap=group_gap)
    return {**inner, **{s: "test" for s in held_out}}


def limit_per_class(samples: list[Sample], max_per_class: int | None, seed: int) -> list[Sample]:
    """The first ``max_per_class`` samples of each class in a seeded shuffle (smoke runs); all if None."""
    if max_per_class is None:
        return list(samples)
    kept: list[Sample] = []
    for class_name in sorted({s[0] for s in samples}):
        items = sorted(s for s in samples if s[0] == class_name)
        class_seed = int(hashlib.sha256(f"{seed}:subset:{class_name}".encode()).hexdigest()[:8], 16)
        order = np.random.default_rng(class_seed).permutation(len(items))[:max_per_class]
        kept.extend(items[i] for i in sorted(order))
    return kept


def write_fold_manifests(
    dataset_dir: str | Path,
    out_dir: str | Path,
    k: int = 5,
    seed: int = 42,
    group_gap: int | None = 300,
    val_fraction: float = 0.15,
    max_per_class: int | None = None,
) -> dict[int, list[Record]]:
    """``fold_<i>.csv`` for i in 0..k-1 in ``out_dir``, each a manifest ``read_manifest`` reads.
    ``max_per_class`` keeps a seeded subset of each class (smoke runs, as ``data.split`` does)."""
    dataset_dir = Path(dataset_dir)
    summary = read_summary(dataset_dir)
    samples = limit_per_class(list_samples(dataset_dir), max_per_class, seed)
    if not samples:
        raise ValueError(f"no image/mask pairs under {dataset_dir}")
    writer = ManifestWriter(dataset_dir, samples, summary.get("archive_sha256", ""))
    return {
        fold: writer.write(
            fold_assignment(samples, fold, k, seed, group_gap, val_fraction),
            fold_manifest_path(out_dir, fold),
        )
        for fold in range(k)
    }


def write_class_out_manifests(
    dataset_dir: str | Path,
    out_dir: str | Path,
    free_class: str,
    seed: int = 42,
    group_gap: int | None = 300,
    val_fraction: float = 0.15,
    max_per_class: int | None = None,
    clean_test_fraction: float = 0.2,
) -> dict[str, list[Record]]:
    """``unseen_<class>.csv`` for every defect class (``class_out_assignment``)."""
    dataset_dir = Path(dataset_dir)
    samples = limit_per_class(list_samples(dataset_dir), max_per_class, seed)
    writer = ManifestWriter(dataset_dir, samples, read_summary(dataset_dir).get("archive_sha256", ""))
    written = {}
    for left_out in sorted({s[0] for s in samples} - {free_class}):
        name = f"unseen_{left_out}"
        assignment = class_out_assignment(
            samples, left_out, free_class, seed, group_gap, val_fraction, clean_test_fraction
        )
        written[name] = writer.write(assignment, fold_manifest_path(out_dir, name))
    return written


def job_name(fold: int | str) -> str:
    """A cross-validation job's name: ``fold_<i>`` for fold i, or the name itself (``unseen_MT_Crack``)."""
    return f"fold_{fold}" if isinstance(fold, int) else str(fold)


def fold_manifest_path(out_dir: str | Path, fold: int | str) -> Path:
    return Path(out_dir) / f"{job_name(fold)}.csv"


def class_out_assignment(
    samples: list[Sample],
    left_out: str,
    free_class: str,
    seed: int,
    group_gap: int | None,
    val_fraction: float,
    clean_test_fraction: float = 0.2,
) -> dict[Sample, str]:
    """Leave one defect class out: every image of ``left_out`` is ``test`` (a defect kind the model
    never saw), with a seeded ``clean_test_fraction`` of the defect-free tile groups as the clean
    tiles it is scored against; the rest (without any ``left_out`` image) is cut into ``train`` and
    ``val`` by whole groups."""
    if left_out == free_class or left_out not in {s[0] for s in samples}:
        raise ValueError(f"{left_out!r} is not a defect class of the dataset")
    rest = [s for s in samples if s[0] != left_out]
    clean = [s for s in rest if s[0] == free_class]
    clean_split = assign_splits(clean, 0.0, clean_test_fraction, seed + 1, group_gap=group_gap)
    held_clean = {s for s, split in clean_split.items() if split == "test"}
    remaining = [s for s in rest if s not in held_clean]
    inner = assign_splits(remaining, val_fraction, 0.0, seed, group_gap=group_gap)
    return {**inner, **{s: "test" for s in held_clean}, **{s: "test" for s in samples if s[0] == left_out}}
