"""Which good tiles spend the reject arm's false-alarm budget? An audit of the out-of-fold head scores.

At ≤ 1 % false alarms only the eight or so highest-scoring of ~770 clean photographs may be rejected,
so the threshold — and with it every defect's recall — is set by the strangest few *clean* tiles. This
lists them (photograph, physical tile, fold, score on the per-fold z scale of ``cv.decision``) so a
person can look at them, and measures how much the recall depends on them: the recall at the same
budget with the k highest-scoring clean tiles left out (k = 0 … 3). That is a sensitivity, not a
result: leaving tiles out is what a relabelling would do, and only a person looking at them may
decide that; the project's metrics never drop them. ``by_lighting`` splits the same threshold by the
archive's lighting setup (``exp1`` … ``exp6``): if one light spent the budget, a per-light scale
would pay; if the clean tails and the recalls are alike, it would not.

    python -m mtdefect.cv.false_alarms                                  # reports/cv/folds → false_alarms.json
    python -m mtdefect.cv.false_alarms reports/cv/paste_0/folds out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtdefect import metrics
from mtdefect.cv.decision import normalised
from mtdefect.cv.pool import tile_ids
from mtdefect.data.split import lighting_index
from mtdefect.fileio import write_json_atomic


def head_z_rows(fold_results: Sequence[dict]) -> list[dict]:
    """Every held-out row with ``fold`` and ``z``: its decision score on the per-fold robust z scale
    of that fold's clean validation images (``reference_scores``), as ``cv.decision`` pools it."""
    rows = []
    for result in fold_results:
        z = normalised(
            "head", np.array([r["score"] for r in result["rows"]]), np.array(result["reference_scores"])
        )
        rows += [
            {**row, "fold": result["fold"], "z": float(v)} for row, v in zip(result["rows"], z, strict=True)
        ]
    return rows


def by_lighting(z: np.ndarray, defective: np.ndarray, images: Sequence[str], threshold: float) -> list[dict]:
    """Per lighting setup (``None``: a file name without one), at one pooled ``threshold``: its clean
    photographs, how many of them it rejects, their median and highest z, and its defects' recall."""
    lights = [lighting_index(Path(image).stem) for image in images]
    table = []
    for light in sorted(set(lights), key=lambda x: (x is None, x or 0)):
        mine = np.array([x == light for x in lights])
        clean, bad = z[mine & ~defective], z[mine & defective]
        table.append(
            {
                "lighting": light,
                "clean_images": int(clean.size),
                "clean_rejected": int((clean > threshold).sum()),
                "clean_median_z": round(float(np.median(clean)), 3) if clean.size else None,
                "clean_max_z": round(float(clean.max()), 3) if clean.size else None,
                "defective_images": int(bad.size),
                "recall": round(float((bad > threshold).mean()), 6) if bad.size else None,
            }
        )
    return table


def audit(
    rows: Sequence[dict], free_class: str, group_gap: int | None, max_rate: float = 0.01, listed: int = 12
) -> dict:
    """The budget's threshold, the ``listed`` highest-scoring clean photographs (tile, fold, z,
    whether rejected), the clean tiles ranked by their highest view, the recall at the same
    budget with the top k of those tiles left out (``without_top_tiles``, k = 0 … 3), and the same
    threshold split by lighting setup (``by_lighting``)."""
    rows = list(rows)
    z = np.array([r["z"] for r in rows])
    defective = np.array([r["class"] != free_class for r in rows])
    tiles = np.array(tile_ids(rows, group_gap))
    at_budget = metrics.recall_at_false_alarm_rate(z, defective, max_rate)
    clean = np.flatnonzero(~defective)
    ranked = clean[np.argsort(-z[clean], kind="stable")]
    photographs = [
        {
            "image": rows[i]["image"],
            "tile": str(tiles[i]),
            "fold": rows[i]["fold"],
            "z": round(float(z[i]), 3),
            "rejected": bool(z[i] > at_budget["threshold"]),
        }
        for i in ranked[:listed]
    ]
    worst_tiles: list[str] = list(dict.fromkeys(str(tiles[i]) for i in ranked))
    sensitivity = []
    for k in range(4):
        keep = ~np.isin(tiles, worst_tiles[:k]) | defective
        sensitivity.append(
            {
                "left_out": worst_tiles[:k],
                "recall_at_1pct_fa": round(
                    metrics.recall_at_false_alarm_rate(z[keep], defective[keep], max_rate)["recall"], 6
                ),
            }
        )
    rejected_tiles = {p["tile"] for p in photographs if p["rejected"]}
    return {
        "scale": "per-fold robust z of the decision score against the fold's clean validation images",
        "clean_images": int(clean.size),
        "defective_images": int(defective.sum()),
        "max_false_alarm_rate": max_rate,
        "threshold": round(float(at_budget["threshold"]), 6),
        "recall_at_1pct_fa": round(float(at_budget["recall"]), 6),
        "rejected_clean_images": int((z[clean] > at_budget["threshold"]).sum()),
        "rejected_clean_tiles": len(rejected_tiles),
        "highest_clean_photographs": photographs,
        "without_top_tiles": sensitivity,
        "by_lighting": by_lighting(z, defective, [r["image"] for r in rows], at_budget["threshold"]),
    }


def rows_arguments(prog: str, description: str, out_name: str, argv: list[str] | None) -> argparse.Namespace:
    """``[ROWS_DIR] [OUT]``, as every out-of-fold audit takes them (defaults: ``cv.rows_dir`` and
    ``<cv.reports_dir>/<out_name>``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("rows_dir", nargs="?", default=None, help="fold_<i>.json rows (default: cv.rows_dir)")
    parser.add_argument(
        "out", nargs="?", default=None, help=f"output JSON (default: <cv.reports_dir>/{out_name})"
    )
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def fold_results(rows_dir: Path) -> list[dict]:
    """Every ``rows_dir/fold_*.json`` result, each with the clean validation scores that put its
    decision on the per-fold z scale (``reference_scores``)."""
    files = sorted(rows_dir.glob("fold_*.json"))
    if not files:
        raise FileNotFoundError(f"no fold_<i>.json rows in {rows_dir}: run the cv stage first")
    results = [json.loads(f.read_text()) for f in files]
    if any("reference_scores" not in r for r in results):
        raise ValueError(f"{rows_dir}: rows written before the clean validation reference was kept")
    return results


def z_rows_from(rows_dir: Path) -> list[dict]:
    """Every held-out row of ``rows_dir/fold_*.json`` with its per-fold z (``head_z_rows``)."""
    return head_z_rows(fold_results(rows_dir))


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import run

    args = rows_arguments(
        "python -m mtdefect.cv.false_alarms", __doc__.split("\n")[0], "false_alarms.json", argv
    )

    def stage(cfg) -> None:
        rows_dir = Path(args.rows_dir or cfg.cv.rows_dir)
        summary = audit(z_rows_from(rows_dir), cfg.data.free_class, cfg.data.split.get("group_gap"))
        summary["rows"] = str(rows_dir)
        out = Path(args.out or Path(cfg.cv.reports_dir) / "false_alarms.json")
        write_json_atomic(out, summary, indent=2)
        print(
            f"false alarms: {summary['rejected_clean_images']} clean photographs of "
            f"{summary['rejected_clean_tiles']} tiles rejected at the budget; recall "
            + ", ".join(f"{s['recall_at_1pct_fa']:.3f}" for s in summary["without_top_tiles"])
            + " with the top 0-3 clean tiles left out"
        )

    run(stage, "cv false alarms")


if __name__ == "__main__":
    main()
