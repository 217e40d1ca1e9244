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
from mtdefect.cv.summary import headline, summarize
from mtdefect.data.folds import write_fold_manifests
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
    summary = summarize(cfg, results, Path(c.reports_dir))
    print(f"cv: {headline(summary)}")


if __name__ == "__main__":
    run(stage, "cv")
