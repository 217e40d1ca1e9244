"""A tile head on the pooled features of a tile's views, screened against the served tile decision.

The served tile decision (``inference.multiview``) runs the image head on each photograph and takes
the median of the views' scores, so a defect that only two of six lightings show is voted down by the
other four. A tile head sees the tile instead: the encoder's pooled head inputs are averaged over the
tile's views (the mean of its photographs' features), and a linear head is fitted on those tile
features of the fold's training tiles (``screen.head_refit.fit_variant`` under its ``config`` variant:
params.yaml's ``head_refit`` L2 grid, flips and objective), the L2 chosen by tile AUROC on the fold's
inner-validation tiles. Its held-out tile scores are put on the decision's scale against the fold's clean
inner-validation *tiles* (``cv.decision.normalised``), as the image head's are against the clean
validation images, and pooled over folds and seeds. Variants:

- ``median_of_views`` (the baseline): the config's image head, the median of the views' z — exactly
  what ``cv.decision`` reports per tile;
- ``image_head_on_mean_features``: the same image head applied to the tile's mean features, which
  tells the pooling's share from the fit's;
- ``tile_head``: the head fitted on the training tiles' mean features.

Every fold model's features come from the head-refit screen's cache (``screen.head_refit``), so a
model already screened costs only the fits. The gain is paired on the same held-out tiles, its
interval by resampling tile groups.

    python -m mtdefect.screen.tile_head OUT.json MODEL_ROOT [MODEL_ROOT ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mtdefect import metrics
from mtdefect.cv.decision import normalised, paired_difference
from mtdefect.cv.pool import pooling_arguments, tile_detector
from mtdefect.data.folds import fold_manifest_path
from mtdefect.data.split import read_manifest, tile_names
from mtdefect.fileio import write_json_atomic
from mtdefect.inference.postprocess import defect_probability
from mtdefect.screen.head_refit import BASELINE as HEAD_REFIT_BASELINE
from mtdefect.screen.head_refit import (
    cached_fold_features,
    fit_variant,
    fold_models,
    screen_arguments,
    variants,
)

BASELINE = "median_of_views"
VARIANTS = (BASELINE, "image_head_on_mean_features", "tile_head")
_KEYS = ("tile_auroc", "tile_recall_at_1pct_fa")


def mean_over_views(features: np.ndarray, tiles: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(T × D) each tile's mean feature row, tiles in order of first appearance, and each tile's rows."""
    tiles = np.asarray(tiles)
    names = list(dict.fromkeys(tiles.tolist()))
    rows = [np.flatnonzero(tiles == name) for name in names]
    return np.stack([features[r].mean(0) for r in rows]), rows


def config_spec(rule: Mapping[str, Any]) -> dict[str, Any]:
    """The head-refit screen's ``config`` variant under ``rule`` (params.yaml's ``head_refit``), its
    objective included: what training's refit fits, and what every variant here is fitted with."""
    return {**variants(rule)[HEAD_REFIT_BASELINE], "objective": str(rule.get("objective", "multinomial"))}


def fold_tile_scores(
    features: Mapping[str, np.ndarray], tiles: Mapping[str, Sequence[str]], rule: Mapping[str, Any], free: int
) -> dict[str, np.ndarray]:
    """Every variant's held-out tile z on one fold model, tiles in ``mean_over_views``' order of
    ``tiles["test"]``; ``features`` as ``screen.head_refit.fold_features`` caches them. Both heads
    are fitted by ``screen.head_refit.fit_variant`` (its L2 choice by validation AUROC): the image
    head on the photographs, the tile head on the tiles' mean features."""
    spec = config_spec(rule)
    image = fit_variant(features, spec, free)
    z = normalised("head", image["held_out"], image["reference"])
    test_mean, test_rows = mean_over_views(features["test"], tiles["test"])
    val_mean, val_rows = mean_over_views(features["val"], tiles["val"])
    val_labels = np.array([features["val_labels"][r[0]] for r in val_rows])
    train_views = [mean_over_views(view, tiles["train"]) for view in features["train"]]
    per_tile = {
        "train": np.stack([pooled for pooled, _ in train_views]),
        "train_labels": np.array([features["train_labels"][r[0]] for r in train_views[0][1]]),
        "val": val_mean,
        "val_labels": val_labels,
        "test": test_mean,
        "class_names": features["class_names"],
    }
    tile = fit_variant(per_tile, spec, free)
    image_head_on_tiles = defect_probability(image["head"](test_mean), free)
    image_head_on_clean_tiles = defect_probability(image["head"](val_mean[val_labels == free]), free)
    return {
        BASELINE: np.array([float(np.median(z[r])) for r in test_rows]),
        "image_head_on_mean_features": normalised("head", image_head_on_tiles, image_head_on_clean_tiles),
        "tile_head": normalised("head", tile["held_out"], tile["reference"]),
    }


def paired_tile_gain(
    baseline: np.ndarray,
    other: np.ndarray,
    defective: np.ndarray,
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
    max_rate: float = 0.01,
) -> dict[str, dict]:
    """``other − baseline`` on the same tiles: tile AUROC and recall at ≤ ``max_rate`` of clean tiles
    rejected, each resample drawing whole tile groups and scoring both on them."""
    levels = {
        "tile_auroc": lambda s, i: metrics.binary_auroc(s[i], defective[i]),
        "tile_recall_at_1pct_fa": lambda s, i: metrics.recall_at_false_alarm_rate(
            s[i], defective[i], max_rate
        )["recall"],
    }
    return {
        key: paired_difference(level, baseline, other, groups, n_resamples, seed + offset)
        for offset, (key, level) in enumerate(levels.items())
    }


def fold_tiles(manifest: Path, group_gap: int | None) -> dict[str, list[str]]:
    """The physical tile of every record of each split, in the manifest's (and the cache's) order."""
    return {
        split: tile_names([(r.class_name, r.image) for r in read_manifest(manifest, split)], group_gap)
        for split in ("train", "val", "test")
    }


def study(cfg: DictConfig, model_roots: Sequence[Path], cache: Path) -> dict[str, Any]:
    """Every variant on every fold model of ``model_roots``, pooled: tile AUROC and tile recall at
    ≤ 1 % of clean tiles, and each variant's paired gain over ``median_of_views``."""
    free_class, group_gap, n_resamples, seed = pooling_arguments(cfg)
    rule = OmegaConf.to_container(cfg.head_refit, resolve=True)
    assert isinstance(rule, dict)
    z: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    defective: list[np.ndarray] = []
    groups: list[str] = []
    for root in model_roots:
        folds = fold_models(root)
        for fold in folds:
            manifest = fold_manifest_path(Path(cfg.cv.manifest_dir), fold)
            features = cached_fold_features(
                root / f"fold_{fold}", Path(cfg.paths.data_dir), manifest, group_gap, cache
            )
            tiles = fold_tiles(manifest, group_gap)
            free = list(features["class_names"]).index(free_class)
            for name, scores in fold_tile_scores(features, tiles, rule, free).items():
                z[name].append(scores)
            _, rows = mean_over_views(features["test"], tiles["test"])
            defective.append(np.array([features["test_classes"][r[0]] != free_class for r in rows]))
            # a tile group is drawn with its rows of every model root (the same physical tiles)
            groups += [str(features["test_groups"][r[0]]) for r in rows]
            print(f"tile-head screen: {root} fold {fold} done", flush=True)
    truth, group_of = np.concatenate(defective), np.array(groups)
    pooled = {name: np.concatenate(parts) for name, parts in z.items()}
    out: dict[str, Any] = {
        "models": [str(r) for r in model_roots],
        "tiles": int(len(truth)),
        "defective_tiles": int(truth.sum()),
        "head_refit": rule,
        "scale": "per fold: robust z against the fold's clean inner-validation tiles (images for "
        "median_of_views, whose z is then the median of the tile's views)",
        "variants": {},
    }
    for name in VARIANTS:
        entry: dict[str, Any] = {
            "summary": tile_detector(pooled[name], truth, group_of, n_resamples, seed, 0.01, _KEYS)
        }
        if name != BASELINE:
            entry["gain_vs_median_of_views"] = paired_tile_gain(
                pooled[BASELINE], pooled[name], truth, group_of, n_resamples, seed
            )
        out["variants"][name] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import load_params

    parser = screen_arguments(
        argparse.ArgumentParser(
            prog="python -m mtdefect.screen.tile_head",
            description="Screen a tile head on a tile's mean view features against the median of views.",
        )
    )
    args = parser.parse_args(argv)
    try:
        result = study(load_params(), args.model_roots, args.cache)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"tile-head screen: error: {exc}", file=sys.stderr)
        sys.exit(1)
    write_json_atomic(args.out, result, indent=1)
    for name, entry in result["variants"].items():
        s = entry["summary"]
        line = (
            f"{name:30s} tile recall@1%FA {s['tile_recall_at_1pct_fa']['value']:.3f}"
            f"  AUROC {s['tile_auroc']['value']:.3f}"
        )
        if "gain_vs_median_of_views" in entry:
            g = entry["gain_vs_median_of_views"]["tile_recall_at_1pct_fa"]
            line += f"  gain {g['value']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
        print(line)


if __name__ == "__main__":
    main()
