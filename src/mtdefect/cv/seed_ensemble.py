"""Trainings of one recipe under other seeds, judged out of fold: how far a seed moves the decision, and
what averaging the seeds' decisions (an ensemble) would buy.

    python -m mtdefect.cv.seed_ensemble reports/cv/folds reports/cv/seed_43/folds [--out FILE]

Each RUN is a folder of ``fold_<i>.json`` rows (``cv.fold``) of the same fold manifests, trained with
another seed; only the folds every run holds are used. Per fold, each run's head probabilities become
logits; the **ensemble** is the mean of the runs' logits, for the held-out images and for the fold's
clean validation images alike (both runs score the same validation list, in the same order), so the
ensemble is normalised exactly as a served two-model decision would be calibrated: a robust z against
its own clean validation scores. **selected** is, per fold, the run with the highest inner-validation
``val/objective`` (train several seeds, serve one: the choice costs training time only). Pooled per
image and per physical tile (median of views), with 95 % intervals by tile group; ``seed_effect`` pairs
each other run with the first on the same images (what a seed alone moves), ``ensemble_gain`` and
``selection_gain`` the ensemble and the selected run with each single run. The masks are not averaged
(the rows hold pixel counts, not maps): this judges the reject decision only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtdefect.cv.decision import TRANSFORMS, paired_gain, robust_z, scorer_summary
from mtdefect.cv.false_alarms import fold_results
from mtdefect.cv.pool import pooling_arguments, tile_ids
from mtdefect.fileio import write_json_atomic

SELECTION_METRIC = "val/objective"  # params.yaml optimized_metric: the inner validation's own objective


def common_folds(runs: Sequence[Path]) -> tuple[list[int], list[list[dict]]]:
    """The fold numbers every run holds, and each run's results for those folds, in that order."""
    by_run = [{result["fold"]: result for result in fold_results(run)} for run in runs]
    folds = sorted(set.intersection(*(set(held) for held in by_run)))
    if not folds:
        raise FileNotFoundError(f"no fold held by every run in {[str(r) for r in runs]}")
    return folds, [[held[f] for f in folds] for held in by_run]


def ensemble_scores(fold_results: Sequence[dict]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """One fold's results from several runs → its rows (the first run's) and each scorer's per-fold z:
    ``seed_<i>`` for run i alone, ``ensemble`` for the mean of their logits."""
    first = fold_results[0]
    images = [r["image"] for r in first["rows"]]
    logit = TRANSFORMS["head"]
    held, reference = [], []
    for result in fold_results:
        by_image = {r["image"]: r["score"] for r in result["rows"]}
        if set(by_image) != set(images):
            raise ValueError(f"fold {first['fold']}: the runs hold different held-out images")
        if len(result["reference_scores"]) != len(first["reference_scores"]):
            raise ValueError(f"fold {first['fold']}: the runs scored different clean validation lists")
        held.append(logit(np.array([by_image[i] for i in images], np.float64)))
        reference.append(logit(np.array(result["reference_scores"], np.float64)))
    z = {f"seed_{i}": robust_z(h, ref) for i, (h, ref) in enumerate(zip(held, reference, strict=True))}
    z["ensemble"] = robust_z(np.mean(held, axis=0), np.mean(reference, axis=0))
    z["selected"] = z[f"seed_{selected_run(fold_results)}"]
    return list(first["rows"]), z


def selected_run(fold_results: Sequence[dict], metric: str = SELECTION_METRIC) -> int:
    """The run a line would keep after training several seeds: the highest inner-validation
    ``metric`` (what checkpoint choice optimises), never a held-out number."""
    return int(np.argmax([result["validation"][metric] for result in fold_results]))


def compare_runs(
    results_by_run: Sequence[Sequence[dict]],
    free_class: str,
    group_gap: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """``results_by_run[r][f]``: run r's result for the f-th common fold. Each run alone and the
    ensemble, pooled over the folds, with the paired gains (``seed_effect``, ``ensemble_gain``)."""
    rows: list[dict] = []
    z: dict[str, list[np.ndarray]] = {}
    chosen = []
    for runs_of_fold in zip(*results_by_run, strict=True):
        fold_rows, fold_z = ensemble_scores(runs_of_fold)
        chosen.append(selected_run(runs_of_fold))
        rows += fold_rows
        for name, values in fold_z.items():
            z.setdefault(name, []).append(values)
    scores = {name: np.concatenate(parts) for name, parts in z.items()}
    classes = np.array([r["class"] for r in rows])
    defective = classes != free_class
    groups = np.array([r["group"] for r in rows])
    tiles = np.array(tile_ids(rows, group_gap))
    result: dict = {
        "images": len(rows),
        "defective_images": int(defective.sum()),
        "tiles": len(set(tiles.tolist())),
        "scale": "per fold: robust z of the head's logit against the fold's clean validation images; "
        "ensemble = the runs' logits averaged before normalising",
    }
    for name, values in scores.items():
        result[name] = scorer_summary(
            values, defective, classes, groups, tiles, free_class, n_resamples, seed
        )
    result["selected_runs"] = chosen  # per fold, the run the inner validation keeps
    singles = [name for name in scores if name not in ("ensemble", "selected")]
    result["seed_effect"] = {  # what a seed alone moves: each other run against the first
        name: paired_gain(scores["seed_0"], scores[name], defective, groups, tiles, n_resamples, seed)
        for name in singles[1:]
    }
    result["ensemble_gain"] = {  # what averaging buys over each single training
        name: paired_gain(scores[name], scores["ensemble"], defective, groups, tiles, n_resamples, seed)
        for name in singles
    }
    result["selection_gain"] = {  # what keeping the run with the better inner validation buys
        name: paired_gain(scores[name], scores["selected"], defective, groups, tiles, n_resamples, seed)
        for name in singles
    }
    return result


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import run

    parser = argparse.ArgumentParser(
        prog="python -m mtdefect.cv.seed_ensemble", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", nargs="+", help="fold-rows folders of the same recipe under other seeds")
    parser.add_argument(
        "--out", default=None, help="output JSON (default: <cv.reports_dir>/seed_ensemble.json)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs (fold-rows folders)")

    def stage(cfg) -> None:
        runs = [Path(r) for r in args.runs]
        folds, results = common_folds(runs)
        summary = compare_runs(results, *pooling_arguments(cfg))
        summary = {"runs": [str(r) for r in runs], "folds": folds, **summary}
        out = Path(args.out or Path(cfg.cv.reports_dir) / "seed_ensemble.json")
        write_json_atomic(out, summary, indent=2)
        for name in [
            k for k in summary if k.startswith("seed_") and k[5:].isdigit() or k in ("ensemble", "selected")
        ]:
            s = summary[name]
            print(
                f"seed_ensemble: {name}: AUROC {s['auroc']['value']:.3f} recall@1%FA "
                f"{s['recall_at_1pct_fa']['value']:.3f} tile {s['tile_recall_at_1pct_fa']['value']:.3f}"
            )
        for name, gain in summary["ensemble_gain"].items():
            g = gain["recall_at_1pct_fa"]
            print(
                f"seed_ensemble: ensemble − {name}: recall@1%FA {g['value']:+.3f} "
                f"[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
            )
        print(f"seed_ensemble: folds {folds} → {out}")

    run(stage, "seed_ensemble")


if __name__ == "__main__":
    main()
