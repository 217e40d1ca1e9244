"""Is a lever's gain real? The paired difference of two out-of-fold runs over the same images.

Both runs scored the same held-out images (the same folds); each bootstrap resample draws whole tile
groups once and scores *both* runs on it, so the interval is that of the difference itself — much
narrower than comparing two separate intervals, which ignore that both runs met the same tiles. A
lever is kept when the interval of its gain lies above zero.

    python -m mtdefect.cv.compare reports/cv/session6_folds01 \
        reports/cv/session6_folds01_rescored_pad_zero out.json

Where AFTER holds only some of BEFORE's folds (a lever tried on a few folds first), BEFORE is paired
on those folds alone; the output names them (``folds``).

A lever tried under several seeds gives one pair per seed (the baseline and the lever, same seed):

    python -m mtdefect.cv.compare reports/cv reports/cv/ema reports/cv/seed_43 reports/cv/ema_seed_43 out.json

The pairs' rows are pooled as one run each side (every image once per seed) and the resamples draw a
tile group with all its rows in every seed, so the interval holds the training noise of the seeds
given as well as the tiles'; ``pairs`` names them.

``decision_scale`` judges the served reject decision itself: each fold's head scores as a robust z
against that fold's clean validation images (``reference_scores``, what a served model's threshold
is set on), then AUROC and recall at ≤ 1 % false alarms per image and per physical tile (median of
its views). A lever can rank better on the pooled raw scores (``difference``) and still reject fewer
defects at the budget on each model's own scale; both are reported.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtdefect import metrics
from mtdefect.cv.decision import paired_gain
from mtdefect.cv.false_alarms import fold_results, head_z_rows
from mtdefect.cv.pool import OutOfFold, _interval, pooling_arguments, tile_ids
from mtdefect.fileio import write_json_atomic
from mtdefect.stages._common import load_params

METRICS = ("dice", "auroc", "recall_at_1pct_fa", "class_top1", "border_fp_share", "clean_region_rate")


def paired_difference(
    before: Sequence[dict], after: Sequence[dict], free_class: str, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """``after − before`` for each of ``METRICS``, with its 95 % interval (tile-group bootstrap)."""
    by_image = {r["image"]: r for r in after}
    if set(by_image) != {r["image"] for r in before}:
        raise ValueError("the two runs did not score the same images")
    a = OutOfFold(before, free_class)
    b = OutOfFold([by_image[r["image"]] for r in before], free_class)
    statistics = {
        "dice": lambda o, i: o.dice(i),
        "auroc": lambda o, i: o.auroc(i),
        "recall_at_1pct_fa": lambda o, i: o.recall_at_fa(i),
        "class_top1": lambda o, i: o.class_top1(i),
        "border_fp_share": lambda o, i: o.border_share(i),
        "clean_region_rate": lambda o, i: o.clean_region_rate(i),
    }
    everyone = np.arange(len(before))
    out = {}
    for offset, name in enumerate(METRICS):
        stat = statistics[name]

        def delta(index: np.ndarray, stat=stat) -> float:
            return stat(b, index) - stat(a, index)

        low, high = metrics.group_bootstrap(a.groups, delta, n_resamples, seed + offset)
        out[name] = {
            **_interval(delta(everyone), low, high),
            "before": stat(a, everyone),
            "after": stat(b, everyone),
        }
    return out


def fold_rows(run_dir: Path) -> list[dict]:
    """Every out-of-fold row of a run folder (``RUN_DIR/folds/fold_*.json``, as the cv stage writes)."""
    paths = sorted((run_dir / "folds").glob("fold_*.json"))
    if not paths:
        raise FileNotFoundError(f"no fold rows in {run_dir / 'folds'} (expected fold_<i>.json files)")
    return [
        {**row, "fold": result["fold"]}
        for path in paths
        for result in [json.loads(path.read_text())]
        for row in result["rows"]
    ]


def paired_runs(pairs: Sequence[tuple[Path, Path]]) -> tuple[list[dict], list[dict], list[int]]:
    """Each (BEFORE, AFTER) pair's rows, AFTER's folds only, pooled over the pairs; with more than one
    pair every image is named once per pair (``image#<pair>``) while its tile group is kept."""
    before_all: list[dict] = []
    after_all: list[dict] = []
    folds: set[int] = set()
    for number, (before, after) in enumerate(pairs):
        before_rows, after_rows = fold_rows(before), fold_rows(after)
        held = {r["fold"] for r in after_rows}
        before_rows = [r for r in before_rows if r["fold"] in held]  # a lever run on some folds: pair those
        if len(pairs) > 1:
            before_rows, after_rows = (
                [{**r, "image": f"{r['image']}#{number}"} for r in rows] for rows in (before_rows, after_rows)
            )
        before_all += before_rows
        after_all += after_rows
        folds |= held
    return before_all, after_all, sorted(folds)


def decision_scale_difference(
    pairs: Sequence[tuple[Path, Path]],
    free_class: str,
    group_gap: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """``after − before`` on the decision's per-fold z scale (AUROC, recall at ≤ 1 % false alarms per
    image and per tile), pooled over the pairs like ``paired_runs``; ``{"skipped": why}`` for runs
    written before the fold results kept their clean validation scores."""
    z: dict[str, list[float]] = {"before": [], "after": []}
    defective: list[bool] = []
    groups: list[str] = []
    tiles: list[str] = []
    for number, (before, after) in enumerate(pairs):
        try:
            results = {"before": fold_results(before / "folds"), "after": fold_results(after / "folds")}
        except ValueError as exc:
            return {"skipped": str(exc)}
        held = {r["fold"] for r in results["after"]}
        rows = {
            side: {r["image"]: r for r in head_z_rows([f for f in found if f["fold"] in held])}
            for side, found in results.items()
        }
        images = sorted(rows["after"])
        if set(images) != set(rows["before"]):
            raise ValueError("the two runs did not score the same images")
        ordered = [rows["before"][i] for i in images]
        for side in z:
            z[side] += [rows[side][i]["z"] for i in images]
        defective += [r["class"] != free_class for r in ordered]
        groups += [r["group"] for r in ordered]
        tiles += [f"{t}#{number}" for t in tile_ids(ordered, group_gap)]
    gain = paired_gain(
        np.array(z["before"]),
        np.array(z["after"]),
        np.array(defective),
        np.array(groups),
        np.array(tiles),
        n_resamples,
        seed,
    )
    scale = "per fold: robust z of the head's logit against the fold's clean validation images"
    return {"scale": scale, **gain}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or len(args) % 2 == 0:
        print(
            "usage: python -m mtdefect.cv.compare BEFORE_DIR AFTER_DIR [BEFORE_DIR AFTER_DIR ...] OUT.json",
            file=sys.stderr,
        )
        sys.exit(2)
    dirs, out = [Path(a) for a in args[:-1]], Path(args[-1])
    pairs = list(zip(dirs[::2], dirs[1::2], strict=True))
    try:
        free_class, group_gap, _, _ = pooling_arguments(load_params())
        before_rows, after_rows, folds = paired_runs(pairs)
        difference = paired_difference(before_rows, after_rows, free_class)
        decision_scale = decision_scale_difference(pairs, free_class, group_gap)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"cv compare: error: {exc}", file=sys.stderr)
        sys.exit(1)
    result = {"before": str(pairs[0][0]), "after": str(pairs[0][1]), "folds": folds, "difference": difference}
    result["decision_scale"] = decision_scale
    if len(pairs) > 1:
        result["pairs"] = [[str(b), str(a)] for b, a in pairs]
    write_json_atomic(out, result, indent=2)
    for name, entry in result["difference"].items():
        change = f"{entry['value']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
        print(f"{name}: {entry['before']:.3f} -> {entry['after']:.3f}, change {change}")
    for name, entry in decision_scale.items():
        if isinstance(entry, dict):
            change = f"{entry['value']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
            print(f"decision scale {name}: {entry['before']:.3f} -> {entry['after']:.3f}, change {change}")


if __name__ == "__main__":
    main()
