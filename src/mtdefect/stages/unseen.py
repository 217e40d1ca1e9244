"""Stage (cv/dvc.yaml:unseen): defect kinds the line never saw — leave one defect class out.

For each defect class X: train the recipe on everything but X (and a held-out slice of the clean tile
groups), then score every image of X and the held-out clean images through the service's path.
``reports/cv/unseen.json``: per left-out class, recall at ≤ 1 % false alarms of those clean images
(per image, and per physical tile with the median of its views), AUROC, and the decision's recall.
One training per defect class (five), jobs resumable and skipped when finished, as the folds are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from mtdefect import metrics
from mtdefect.cv.fold import CvPaths
from mtdefect.cv.jobs import run_folds
from mtdefect.cv.pool import tile_level
from mtdefect.data.folds import write_class_out_manifests
from mtdefect.fileio import write_json_atomic
from mtdefect.stages._common import run


def left_out_summary(
    rows: list[dict], left_out: str, free_class: str, group_gap: int | None, rate: float
) -> dict:
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    defective = np.array([r["class"] == left_out for r in rows])
    at_budget = metrics.recall_at_false_alarm_rate(scores, defective, rate)
    tiles = tile_level(rows, free_class, group_gap, n_resamples=200, seed=0, max_false_alarm_rate=rate)
    decided = metrics.detection_rates(np.array([r["defective"] for r in rows]), defective)
    return {
        "images": int(defective.sum()),
        "clean_images": int((~defective).sum()),
        "recall_at_1pct_fa": round(at_budget["recall"], 6),
        "auroc": round(metrics.binary_auroc(scores, defective), 6),
        "tile_recall_at_1pct_fa": tiles["median"]["tile_recall_at_1pct_fa"]["value"],
        "tiles": tiles["defective_tiles"],
        "recall_at_decision": round(decided["recall"], 6),
        "false_alarm_rate_at_decision": round(decided["false_alarm_rate"], 6),
    }


def unseen_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the cross-validation folders swapped for the leave-one-class-out ones (``cv.unseen``)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        for key in ("manifest_dir", "model_dir", "checkpoint_dir", "rows_dir"):
            out.cv[key] = out.cv.unseen[key]
    return out


def stage(cfg: DictConfig) -> None:
    cfg = unseen_config(cfg)
    c = cfg.cv
    paths = CvPaths.from_cfg(cfg)
    free = cfg.data.free_class
    written = write_class_out_manifests(
        cfg.paths.data_dir,
        paths.manifest_dir,
        free,
        c.seed,
        cfg.data.split.get("group_gap"),
        c.val_fraction,
        cfg.data.split.get("max_per_class"),
        c.unseen.clean_test_fraction,
    )
    jobs = sorted(written)
    run_folds(cfg, jobs, jobs=int(c.get("jobs", 1)))
    rate = float(cfg.calibration.max_false_alarm_rate)
    summary = {}
    for job in jobs:
        left_out = job.removeprefix("unseen_")
        rows = json.loads(paths.rows(job).read_text())["rows"]
        summary[left_out] = left_out_summary(rows, left_out, free, cfg.data.split.get("group_gap"), rate)
        s = summary[left_out]
        print(
            f"unseen: {left_out} never seen in training: recall at 1% FA {s['recall_at_1pct_fa']:.3f} "
            f"({s['images']} images), per tile {s['tile_recall_at_1pct_fa']}, AUROC {s['auroc']:.3f}"
        )
    write_json_atomic(Path(c.reports_dir) / "unseen.json", summary, indent=2)


if __name__ == "__main__":
    run(stage, "unseen")
