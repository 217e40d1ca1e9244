"""Judge an inference-only lever under cross-validation without training again.

A lever that changes only how the service runs a trained network (the stride padding, test-time
flips, the calibration's choices such as the mask gate) does not need new fold models: each fold's
model is run under the changed preprocessing, its decision and mask settings are calibrated again
on the fold's own inner validation tiles (``calibrate.calibrate_on_validation``, as training does,
under the changed calibration options), and its held-out fold is scored through the service's path.
The rows and the pooled summary go to ``<cv.reports_dir>/<name>/`` beside the recipe's own, so the
two are compared with the same intervals. The tile head keeps the refit it got in training unless a
``head_refit.<field>`` override is given: then the head's linear layer is refitted as training
refits it (``model.head_fit``, on the fold's training tiles, L2 chosen on its inner validation), under
the config's ``head_refit`` options with the overrides applied (the head the fold saved competes
only with ``keep_current_head``). The encoder is untouched, so this judges a head-refit lever exactly,
without training.

    python -m mtdefect.cv.rescore pad_zero preprocess.pad=zero
    python -m mtdefect.cv.rescore gate_at_decision calibration.max_region_rate=null
    python -m mtdefect.cv.rescore hard_negatives head_refit.hard_negative_weight=4
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mtdefect.calibrate import calibrate_on_validation
from mtdefect.cv.fold import CvPaths, score_held_out
from mtdefect.cv.summary import summarize
from mtdefect.data.folds import fold_manifest_path
from mtdefect.data.split import read_manifest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference import ModelSettings, Predictor
from mtdefect.inference.predictor import load_torch_net, torch_runner
from mtdefect.model.head_fit import refit_head_from_manifest
from mtdefect.scoring import image_row, score_split

OVERRIDE_GROUPS = ("preprocess", "calibration", "head_refit")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``preprocess.pad=zero`` → {"preprocess": {"pad": "zero"}} (values parsed as JSON, else text);
    ``calibration.<field>=<value>`` / ``head_refit.<field>=<value>`` replace one of the config's
    calibration / head-refit options."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        group, _, field = key.partition(".")
        if group not in OVERRIDE_GROUPS or not field:
            raise ValueError(
                f"unsupported override {pair!r}: "
                "only preprocess.<field>=<value>, calibration.<field>=<value> or head_refit.<field>=<value>"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(group, {})[field] = value
    return out


def rescore_fold(cfg: DictConfig, fold: int, overrides: dict[str, Any]) -> dict:
    paths = CvPaths.from_cfg(cfg)
    model_dir = paths.model_dir / f"fold_{fold}"
    manifest = fold_manifest_path(paths.manifest_dir, fold)
    settings = ModelSettings.load(model_dir)
    settings = replace(settings, preprocess=replace(settings.preprocess, **overrides.get("preprocess", {})))
    net = load_torch_net(model_dir, settings)
    val = read_manifest(manifest, "val")
    head_report = None
    if "head_refit" in overrides:
        options = {**dict(cfg.get("head_refit", {})), **overrides["head_refit"]}
        head_report = refit_head_from_manifest(
            net,
            cfg.paths.data_dir,
            manifest,
            settings.class_names,
            settings.class_names.index(cfg.data.free_class),
            settings.preprocess,
            options,
            current_head="the fold's saved head",
        )
    runner = torch_runner(net)
    predictor = Predictor(settings, runner, "torch-cpu")
    options = {**dict(cfg.get("calibration", {})), **overrides.get("calibration", {})}
    flips, post, _ = calibrate_on_validation(predictor, cfg.paths.data_dir, val, options)
    settings = replace(settings, postprocess=post, test_time_flips=flips)
    predictor = Predictor(settings, runner, "torch-cpu")
    rows = score_held_out(
        model_dir, Path(cfg.paths.data_dir), manifest, cfg.data.split.get("group_gap"), predictor
    )
    clean_val = [r for r in val if r.class_name == cfg.data.free_class]
    reference = [
        image_row(item, post)["score"] for item in score_split(predictor, cfg.paths.data_dir, clean_val)
    ]
    return {
        "fold": fold,
        "decision_threshold": post.decision_threshold,
        "reference_scores": reference,
        "rows": rows,
        **({"head_refit": head_report} if head_report else {}),
    }


def rescore(cfg: DictConfig, name: str, overrides: dict[str, Any], folds: list[int] | None = None) -> dict:
    """Every fold in ``folds`` (default: all k) rescored; rows and summary in ``<reports_dir>/<name>/``."""
    out = Path(cfg.cv.reports_dir) / name
    results = []
    for fold in range(cfg.cv.k) if folds is None else folds:
        result = rescore_fold(cfg, fold, overrides)
        write_json_atomic(out / "folds" / f"fold_{fold}.json", {**result, "overrides": overrides}, indent=1)
        results.append(result)
        print(f"rescore {name}: fold {fold} done ({len(result['rows'])} held-out images)")
    return summarize(cfg, results, out, rescored_with=overrides)


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import run

    args = sys.argv[1:] if argv is None else argv
    folds = None
    if "--folds" in args:  # --folds 0,1: only those (finished) folds
        at = args.index("--folds")
        folds = [int(f) for f in args[at + 1].split(",")]
        args = args[:at] + args[at + 2 :]
    if len(args) < 2:
        print(
            "usage: python -m mtdefect.cv.rescore NAME preprocess.<field>=<value> "
            "calibration.<field>=<value> head_refit.<field>=<value> ... [--folds 0,1]",
            file=sys.stderr,
        )
        sys.exit(2)
    overrides = parse_overrides(args[1:])
    run(lambda cfg: rescore(cfg, args[0], overrides, folds), f"cv rescore {args[0]}")


if __name__ == "__main__":
    main()
