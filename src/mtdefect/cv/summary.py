"""Fold results → the written summary: ``metrics.json`` (pooled numbers with intervals, the recipe,
which folds were pooled) and ``plots/*.json`` in one folder. Used by the cv stage, by ``cv.rescore``,
and on its own to pool the folds that are finished so far:

    python -m mtdefect.cv.summary reports/cv/folds reports/cv/partial 0 1
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from mtdefect.cv.pool import curves, pool
from mtdefect.fileio import write_json_atomic


def recipe_of(cfg: DictConfig) -> dict:
    return {
        "arch": cfg.model.get("arch"),
        "encoder": cfg.model.get("encoder"),
        "crop_size": cfg.data.module.get("crop_size"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "preprocess_scale": cfg.data.preprocess.get("scale"),
        "preprocess_pad": cfg.data.preprocess.get("pad"),
        "max_region_rate": (cfg.get("calibration") or {}).get("max_region_rate"),
        "paste_p": float(cfg.data.module.get("paste_p") or 0.0),
        "gamma": float(cfg.data.module.get("gamma") or 0.0),
        "illumination": float(cfg.data.module.get("illumination") or 0.0),
        "decision_criterion": (cfg.get("calibration") or {}).get("decision_criterion", "recall"),
        "weight_averaging": weight_averaging(cfg),
        "head_refit": head_refit_options(cfg),
        "seed": cfg.seed,
    }


def head_refit_options(cfg: DictConfig) -> dict:
    """The head-refit options that change which head is served (configs written before they
    existed kept the crop-trained head where it validated better, unweighted: none listed)."""
    options = cfg.get("head_refit") or {}
    return {k: options[k] for k in ("keep_current_head", "hard_negative_weight", "objective") if k in options}


def weight_averaging(cfg: DictConfig) -> dict | None:
    """The EMA of the weights the recipe trains with (``callbacks=ema``), or None."""
    for callback in (cfg.get("callbacks") or {}).values():
        if str((callback or {}).get("_target_", "")).endswith("EMAWeightAveraging"):
            return {"decay": callback.get("decay"), "start_step": callback.get("update_starting_at_step")}
    return None


def summarize(cfg: DictConfig, results: Sequence[dict], out_dir: Path, **recipe_extra) -> dict:
    """Pool ``results`` (each fold's rows file, parsed) into ``out_dir``; returns the summary."""
    rows = [{**row, "fold": r["fold"]} for r in results for row in r["rows"]]
    free = cfg.data.get("free_class", "MT_Free")
    summary = pool(
        rows,
        free,
        fold_thresholds={r["fold"]: r["decision_threshold"] for r in results},
        n_resamples=int(cfg.cv.bootstrap),
        seed=int(cfg.cv.seed),
        max_false_alarm_rate=float(cfg.calibration.max_false_alarm_rate),
        group_gap=cfg.data.split.get("group_gap"),
    )
    summary["k"] = int(cfg.cv.k)  # the partition; folds_pooled says which of its folds are in
    summary["folds_pooled"] = sorted(r["fold"] for r in results)
    summary["recipe"] = {**recipe_of(cfg), **recipe_extra}
    summary["fold_seconds"] = [r.get("seconds") for r in results if r.get("seconds") is not None]
    write_json_atomic(out_dir / "metrics.json", summary, indent=2)
    for name, points in curves(rows, free).items():
        write_json_atomic(out_dir / "plots" / f"{name}.json", points, indent=2)
    return summary


def fmt(entry: dict) -> str:
    if entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def headline(summary: dict) -> str:
    pooled = summary["folds_pooled"]
    return (
        f"{len(pooled)} of {summary['k']} folds, {summary['images']} images in {summary['groups']} tile "
        f"groups | dice {fmt(summary['dice'])} | auroc {fmt(summary['auroc'])} | recall at 1% FA "
        f"{fmt(summary['recall_at_1pct_fa'])} | class top-1 {fmt(summary['class_top1'])} | border share of "
        f"FP pixels {fmt(summary['border_fp_share'])}"
    )


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import run

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print("usage: python -m mtdefect.cv.summary ROWS_DIR OUT_DIR FOLD [FOLD ...]", file=sys.stderr)
        sys.exit(2)
    rows_dir, out_dir, folds = Path(args[0]), Path(args[1]), [int(f) for f in args[2:]]

    def stage(cfg: DictConfig) -> None:
        results = [json.loads((rows_dir / f"fold_{f}.json").read_text()) for f in folds]
        print(f"cv summary: {headline(summarize(cfg, results, out_dir))} → {out_dir}")

    run(stage, "cv summary")


if __name__ == "__main__":
    main()
