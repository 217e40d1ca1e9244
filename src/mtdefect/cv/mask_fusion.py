"""Is the mask's own evidence worth fusing with the tile head? Measured on the fold models, no training.

The network answers twice in one forward pass: the tile head (1 − P(MT_Free)) and the defect mask,
whose image score is its highest mean probability over a window (``postprocess.tile_score`` with
``score_source`` ``head`` or ``mask``: the service's own scores). Calibration picks one of them per
model on its validation tiles; this asks whether the two together reject more defective tiles at
≤ 1 % false alarms. Each fold model scores its held-out images and its clean inner-validation images
once (``score_split``: decode → Predictor, native size); every score is normalised against that
fold's clean validation images (logit, robust z: ``cv.decision.normalised``) and compared alone and
fused with the head: sum and max of the z-scores, and a logistic combination cross-fitted over folds.
Intervals resample tile groups (``cv.decision.scorer_summary``).

    python -m mtdefect.cv.mask_fusion [--models DIR] [--out FILE] [--windows 1,5,9]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtdefect.cv.decision import cross_fitted, normalised, scorer_summary
from mtdefect.cv.pool import pooling_arguments, tile_ids

WINDOWS = (1, 5, 9, 15, 25)


def score_fold(
    model_dir: Path,
    data_dir: Path,
    manifest: Path,
    free_class: str,
    group_gap: int | None,
    windows: Sequence[int],
) -> list[dict]:
    """Held-out (``test``) and clean validation images of one fold manifest: one row each with
    ``split``, ``group`` and ``scores`` (``head`` and ``mask<w>`` for each window)."""
    from mtdefect.data.folds import group_ids
    from mtdefect.data.split import read_manifest
    from mtdefect.inference import Predictor
    from mtdefect.inference.postprocess import tile_score
    from mtdefect.scoring import score_split

    predictor = Predictor.from_dir(model_dir, backend="torch")
    post = predictor.settings.postprocess
    sources = {"head": replace(post, score_source="head", free_class=free_class)}
    sources |= {f"mask{w}": replace(post, score_source="mask", score_window=int(w)) for w in windows}
    everyone = read_manifest(manifest)
    groups = group_ids([(r.class_name, Path(r.image).stem) for r in everyone], group_gap)
    records = [r for r in everyone if r.split == "test" or (r.split == "val" and r.class_name == free_class)]
    rows = []
    for item in score_split(predictor, data_dir, records):
        rows.append(
            {
                "image": item.record.image,
                "class": item.record.class_name,
                "split": item.record.split,
                "group": groups[(item.record.class_name, Path(item.record.image).stem)],
                "scores": {
                    name: tile_score(item.probability, settings, item.class_scores)
                    for name, settings in sources.items()
                },
            }
        )
    return rows


def compare_scorers(
    rows: Sequence[dict], free_class: str, group_gap: int | None, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """``rows``: ``score_fold``'s rows with ``fold``. Each scorer normalised by its fold's clean
    validation rows; the held-out rows summarised alone and fused with the head."""
    held = [r for r in rows if r["split"] == "test"]
    folds = np.array([r["fold"] for r in held])
    scorers = list(held[0]["scores"])
    z: dict[str, np.ndarray] = {}
    for name in scorers:
        raw = np.array([r["scores"][name] for r in held], dtype=np.float64)
        z[name] = np.empty_like(raw)
        for fold in sorted(set(folds.tolist())):
            reference = [r["scores"][name] for r in rows if r["fold"] == fold and r["split"] == "val"]
            if not reference:
                raise ValueError(f"fold {fold} has no clean validation rows to normalise against")
            index = folds == fold
            z[name][index] = normalised("head", raw[index], np.array(reference, dtype=np.float64))
    classes = np.array([r["class"] for r in held])
    defective = classes != free_class
    for name in scorers:
        if name == "head":
            continue
        z[f"head+{name}"] = z["head"] + z[name]
        z[f"max(head,{name})"] = np.maximum(z["head"], z[name])
        if len(set(folds.tolist())) > 1:
            z[f"fitted(head,{name})"] = cross_fitted(np.column_stack([z["head"], z[name]]), defective, folds)
    groups = np.array([r["group"] for r in held])
    tiles = np.array(tile_ids(held, group_gap))
    return {
        "images": len(held),
        "defective_images": int(defective.sum()),
        "normalisation": "per fold: robust z of the logit against the fold's clean validation images; "
        "head+X = sum of z, max(head,X) = the larger, fitted(head,X) = logistic cross-fitted over folds",
        "scorers": {
            name: scorer_summary(scores, defective, classes, groups, tiles, free_class, n_resamples, seed)
            for name, scores in z.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    from mtdefect.data.folds import fold_manifest_path
    from mtdefect.fileio import write_json_atomic
    from mtdefect.stages._common import run

    parser = argparse.ArgumentParser(
        prog="python -m mtdefect.cv.mask_fusion",
        description="Score the fold models' held-out images by head and mask, alone and fused.",
    )
    parser.add_argument("--models", help="fold models folder (default: cv.model_dir)")
    parser.add_argument("--out", help="summary file (default: <cv.reports_dir>/mask_fusion.json)")
    parser.add_argument("--windows", default=",".join(map(str, WINDOWS)), help="mask score windows")
    args = parser.parse_args(argv)
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        parser.error(f"--windows takes whole numbers separated by commas, got {args.windows!r}")
    if not windows or min(windows) < 1:
        parser.error("--windows: each window is at least 1 pixel")

    def stage(cfg) -> None:
        models = Path(args.models or cfg.cv.model_dir)
        rows = []
        for fold in range(int(cfg.cv.k)):
            model_dir = models / f"fold_{fold}"
            if not (model_dir / "settings.json").is_file():
                raise FileNotFoundError(f"no fold model in {model_dir} (run the cv stage first)")
            manifest = fold_manifest_path(Path(cfg.cv.manifest_dir), fold)
            scored = score_fold(
                model_dir,
                Path(cfg.paths.data_dir),
                manifest,
                cfg.data.free_class,
                cfg.data.split.get("group_gap"),
                windows,
            )
            rows += [{**r, "fold": fold} for r in scored]
            print(f"mask fusion: fold {fold} scored ({len(scored)} images)")
        summary = compare_scorers(rows, *pooling_arguments(cfg))
        summary["models"] = str(models)
        out = Path(args.out or Path(cfg.cv.reports_dir) / "mask_fusion.json")
        write_json_atomic(out, summary, indent=2)
        write_json_atomic(out.with_name(out.stem + "_rows.json"), rows, indent=None)
        for name, s in summary["scorers"].items():
            print(
                f"mask fusion: {name}: AUROC {s['auroc']['value']} recall@1%FA "
                f"{s['recall_at_1pct_fa']['value']} tile recall@1%FA {s['tile_recall_at_1pct_fa']['value']}"
            )

    run(stage, "cv mask_fusion")


if __name__ == "__main__":
    main()
