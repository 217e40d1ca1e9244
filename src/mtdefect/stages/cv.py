"""Stage (cv/dvc.yaml): grouped k-fold cross-validation of the configured recipe.

Writes the fold manifests (``cv.manifest_dir``), makes every fold finished (``cv.jobs`` at a time,
finished folds skipped), then pools the out-of-fold rows into ``<cv.reports_dir>/metrics.json``
(what ``dvc exp show`` lists) and ``<cv.reports_dir>/plots/*.json`` (what ``dvc plots`` draws).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from mtdefect.cv.fold import CvPaths
from mtdefect.cv.jobs import run_folds
from mtdefect.cv.pool import curves, pool
from mtdefect.data.folds import write_fold_manifests
from mtdefect.fileio import write_json_atomic
from mtdefect.stages._common import run


def stage(cfg: DictConfig) -> None:
    c = cfg.cv
    paths = CvPaths.from_cfg(cfg)
    write_fold_manifests(
        cfg.paths.data_dir,
        paths.manifest_dir,
        c.k,
        c.seed,
        cfg.data.split.get("group_gap"),
        c.val_fraction,
        cfg.data.split.get("max_per_class"),
    )
    folds = list(range(c.k))
    run_folds(cfg, folds, jobs=int(c.get("jobs", 1)))
    results = [json.loads(paths.rows(f).read_text()) for f in folds]
    rows = [{**row, "fold": r["fold"]} for r in results for row in r["rows"]]
    free = cfg.data.get("free_class", "MT_Free")
    summary = pool(
        rows,
        free,
        fold_thresholds={r["fold"]: r["decision_threshold"] for r in results},
        n_resamples=int(c.bootstrap),
        seed=int(c.seed),
        max_false_alarm_rate=float(cfg.calibration.max_false_alarm_rate),
        group_gap=cfg.data.split.get("group_gap"),
    )
    summary["recipe"] = {
        "arch": cfg.model.get("arch"),
        "encoder": cfg.model.get("encoder"),
        "crop_size": cfg.data.module.get("crop_size"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "preprocess_scale": cfg.data.preprocess.get("scale"),
        "seed": cfg.seed,
    }
    summary["fold_seconds"] = [r["seconds"] for r in results]
    out = Path(c.reports_dir)
    write_json_atomic(out / "metrics.json", summary, indent=2)
    for name, points in curves(rows, free).items():
        write_json_atomic(out / "plots" / f"{name}.json", points, indent=2)
    fa, border = summary["recall_at_1pct_fa"], summary["border_fp_share"]
    print(
        f"cv: {summary['k']} folds, {summary['images']} images in {summary['groups']} tile groups | "
        f"dice {_fmt(summary['dice'])} | auroc {_fmt(summary['auroc'])} | recall at 1% FA {_fmt(fa)} | "
        f"class top-1 {_fmt(summary['class_top1'])} | border share of FP pixels {_fmt(border)}"
    )


def _fmt(entry: dict) -> str:
    if entry.get("value") is None:
        return "n/a"
    return (
        f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
        if entry.get("ci_low") is not None
        else f"{entry['value']:.3f}"
    )


if __name__ == "__main__":
    run(stage, "cv")
