"""Stage (cv/dvc.yaml:unseen): defect kinds the line never saw — leave one defect class out.

For each defect class X: train the recipe on everything but X (and a held-out slice of the clean tile
groups), then score every image of X and the held-out clean images through the service's path.
``reports/cv/unseen.json``: the recipe, and per left-out class (``classes``) recall at ≤ 1 % false alarms
of those clean images (per image, and per physical tile with the median of its views) and AUROC, each
with a 95 % interval by tile group, and the recall and false alarms of the model's own decision.
One training per defect class (five), jobs resumable and skipped when finished, as the folds are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mtdefect import metrics
from mtdefect.cv.fold import CvPaths, unseen_config
from mtdefect.cv.jobs import run_folds
from mtdefect.cv.pool import _interval, tile_level
from mtdefect.cv.summary import recipe_of
from mtdefect.data.folds import write_class_out_manifests
from mtdefect.fileio import write_json_atomic
from mtdefect.stages._common import run


def left_out_summary(
    rows: list[dict],
    left_out: str,
    free_class: str,
    group_gap: int | None,
    rate: float,
    n_resamples: int = 1000,
) -> dict:
    """One left-out class against the held-out clean images: recall at ≤ ``rate`` false alarms and
    AUROC per image, recall per physical tile (median of its views), each with a 95 % interval from
    resampling whole tile groups, and the recall and false alarms of the model's own decision."""
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    defective = np.array([r["class"] == left_out for r in rows])
    groups = [r["group"] for r in rows]

    def recall(index: np.ndarray) -> float:
        return metrics.recall_at_false_alarm_rate(scores[index], defective[index], rate)["recall"]

    def auroc(index: np.ndarray) -> float:
        return metrics.binary_auroc(scores[index], defective[index])

    everyone = np.arange(len(rows))
    at_budget, area = (
        _interval(statistic(everyone), *metrics.group_bootstrap(groups, statistic, n_resamples, offset))
        for statistic, offset in ((recall, 0), (auroc, 1))
    )
    tiles = tile_level(
        rows, free_class, group_gap, n_resamples=n_resamples, seed=0, max_false_alarm_rate=rate
    )
    decided = metrics.detection_rates(np.array([r["defective"] for r in rows]), defective)
    return {
        "images": int(defective.sum()),
        "clean_images": int((~defective).sum()),
        "recall_at_1pct_fa": at_budget,
        "auroc": area,
        "tile_recall_at_1pct_fa": tiles["median"]["tile_recall_at_1pct_fa"],
        "tiles": tiles["defective_tiles"],
        "clean_tiles": tiles["tiles"] - tiles["defective_tiles"],
        "recall_at_decision": round(decided["recall"], 6),
        "false_alarm_rate_at_decision": round(decided["false_alarm_rate"], 6),
    }


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
    summary: dict = {}
    for job in jobs:
        left_out = job.removeprefix("unseen_")
        rows = json.loads(paths.rows(job).read_text())["rows"]
        summary[left_out] = left_out_summary(
            rows, left_out, free, cfg.data.split.get("group_gap"), rate, int(c.get("bootstrap", 1000))
        )
        s = summary[left_out]
        print(
            f"unseen: {left_out} never seen in training: "
            f"recall at 1% FA {s['recall_at_1pct_fa']['value']:.3f} ({s['images']} images), "
            f"per tile {s['tile_recall_at_1pct_fa']['value']}, "
            f"AUROC {s['auroc']['value']:.3f}"
        )
    seconds = {job: json.loads(paths.rows(job).read_text()).get("seconds") for job in jobs}
    report = {
        "recipe": recipe_of(cfg),
        "max_false_alarm_rate": rate,
        "job_seconds": seconds,
        "classes": summary,
    }
    write_json_atomic(Path(c.reports_dir) / "unseen.json", report, indent=2)


if __name__ == "__main__":
    run(stage, "unseen")
