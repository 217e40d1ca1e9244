"""Defects on the tile's rim: how much of each class lies in the border band, and how it is found there.

The border band (``metrics.border_band``: 4 % of each side, 15 % of the area) is where clean tiles
differ most (dark rims, chamfers) and where issue #20 asks for few false-positive pixels. Some defects
live there: a Break is a chipped edge. This splits each class's out-of-fold photographs into *rim*
ones (more than half of their defect pixels inside the band) and the rest, and gives for each part the
Dice, the recall at each fold's own decision, and the recall at ≤ 1 % false alarms on the decision's
per-fold z scale (``cv.decision``; all clean photographs as the negatives), with 95 % intervals by
tile group. A lever that quiets the rim is then judged on the defects it could hide as well.

    python -m mtdefect.cv.rim_defects                     # reports/cv/folds → reports/cv/rim_defects.json
    python -m mtdefect.cv.rim_defects reports/cv/paste_0/folds out.json
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mtdefect import metrics
from mtdefect.cv.pool import OutOfFold, _interval
from mtdefect.fileio import write_json_atomic

RIM_SHARE = 0.5  # a photograph is a rim one when more than this share of its defect pixels is in the band


def band_pixels(mask: np.ndarray) -> tuple[int, int]:
    """(defect pixels inside the border band, all defect pixels) of a boolean mask."""
    return int(np.count_nonzero(mask & metrics.border_band(mask.shape))), int(np.count_nonzero(mask))


def summarise(
    rows: Sequence[dict],
    pixels: Mapping[str, tuple[int, int]],
    free_class: str,
    max_rate: float = 0.01,
    n_resamples: int = 1000,
) -> dict:
    """Per defect class (and ``all`` of them pooled): its share of defect pixels in the band, and for
    its rim and interior photographs the Dice, recall at decision and recall at ≤ ``max_rate`` false
    alarms (rows carry ``z`` as ``false_alarms.head_z_rows`` gives it; ``pixels`` maps image →
    ``band_pixels``)."""
    rows = list(rows)
    z = np.array([r["z"] for r in rows])
    defective = np.array([r["class"] != free_class for r in rows])
    groups = [r["group"] for r in rows]
    clean = np.flatnonzero(~defective)
    oof = OutOfFold(rows, free_class)  # the pooled summary's pixel counts and Dice

    def at_budget(i: np.ndarray) -> float:
        return metrics.recall_at_false_alarm_rate(z[i], defective[i], max_rate)["recall"]

    def part(index: np.ndarray) -> dict:
        if not index.size:
            return {
                "images": 0,
                "tiles": 0,
                "dice": None,
                "recall_at_decision": None,
                "recall_at_1pct_fa": None,
            }
        with_clean = np.concatenate([index, clean])
        sub = [groups[j] for j in with_clean]
        return {
            "images": int(index.size),
            "tiles": len({groups[j] for j in index}),
            "dice": _interval(
                oof.dice(index),
                *metrics.group_bootstrap(
                    [groups[j] for j in index], lambda i: oof.dice(index[i]), n_resamples
                ),
            ),
            "recall_at_decision": round(float(np.mean([rows[j]["defective"] for j in index])), 6),
            "recall_at_1pct_fa": _interval(
                at_budget(with_clean),
                *metrics.group_bootstrap(sub, lambda i: at_budget(with_clean[i]), n_resamples, 1),
            ),
        }

    out = {}
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # class → (rim rows, interior rows)
    for cls in sorted({r["class"] for r in rows} - {free_class}) + ["all"]:
        index = np.array(
            [j for j, r in enumerate(rows) if r["class"] == cls or (cls == "all" and defective[j])], dtype=int
        )
        inside, total = (sum(pixels[rows[j]["image"]][k] for j in index) for k in (0, 1))
        rim = np.array([j for j in index if _rim(pixels[rows[j]["image"]])], dtype=int)
        interior = np.setdiff1d(index, rim)
        if cls != "all":
            parts[cls] = (rim, interior)
        out[cls] = {
            "images": int(index.size),
            "defect_pixels_in_band": round(inside / total, 6) if total else None,
            "rim": part(rim),
            "interior": part(interior),
        }

    def class_matched(statistic, drawn: np.ndarray) -> float:
        """Rim minus interior within each class, averaged with the rim's image counts as weights:
        the rim's own effect, without the class mix (rim photographs are mostly of weak classes)."""
        gaps, weights = [], []
        negatives = drawn[~defective[drawn]]
        for rim_rows, interior_rows in parts.values():
            rim_drawn = drawn[np.isin(drawn, rim_rows)]
            interior_drawn = drawn[np.isin(drawn, interior_rows)]
            if rim_drawn.size and interior_drawn.size:
                both = [np.concatenate([p, negatives]) for p in (rim_drawn, interior_drawn)]
                gaps.append(statistic(both[0]) - statistic(both[1]))
                weights.append(rim_drawn.size)
        return float(np.average(gaps, weights=weights)) if gaps else float("nan")

    everyone = np.arange(len(rows))
    out["all"]["class_matched_rim_gap"] = {
        name: _interval(
            class_matched(statistic, everyone),
            *metrics.group_bootstrap(groups, lambda i, s=statistic: class_matched(s, i), n_resamples, 2),
        )
        for name, statistic in (("dice", oof.dice), ("recall_at_1pct_fa", at_budget))
    }
    return {
        "band": "4 % of each side (15 % of the area), metrics.border_band",
        "rim_photograph": f"more than {RIM_SHARE:.0%} of its defect pixels in the band",
        "max_false_alarm_rate": max_rate,
        "classes": out,
    }


def _rim(counts: tuple[int, int]) -> bool:
    inside, total = counts
    return total > 0 and inside > RIM_SHARE * total


def main(argv: list[str] | None = None) -> None:
    from mtdefect.cv.false_alarms import rows_arguments, z_rows_from
    from mtdefect.scoring import read_truth
    from mtdefect.stages._common import run

    args = rows_arguments(
        "python -m mtdefect.cv.rim_defects", __doc__.split("\n")[0], "rim_defects.json", argv
    )

    def stage(cfg) -> None:
        rows_dir = Path(args.rows_dir or cfg.cv.rows_dir)
        rows = z_rows_from(rows_dir)
        data = Path(cfg.paths.data_dir)
        pixels = {
            r["image"]: band_pixels(read_truth(data / Path(r["image"]).with_suffix(".png")))
            for r in rows
            if r["class"] != cfg.data.free_class
        }
        summary = summarise(rows, pixels, cfg.data.free_class, float(cfg.calibration.max_false_alarm_rate))
        summary["rows"] = str(rows_dir)
        out = Path(args.out or Path(cfg.cv.reports_dir) / "rim_defects.json")
        write_json_atomic(out, summary, indent=2)

        def value(entry: dict | None) -> float | None:
            return entry and entry["value"]

        for cls, s in summary["classes"].items():
            rim, interior = s["rim"], s["interior"]
            print(
                f"rim defects: {cls}: {s['defect_pixels_in_band']} of defect pixels in the band; "
                f"rim {rim['images']} photographs: Dice {value(rim['dice'])}, recall@1%FA "
                f"{value(rim['recall_at_1pct_fa'])}; interior {interior['images']}: Dice "
                f"{value(interior['dice'])}, recall@1%FA {value(interior['recall_at_1pct_fa'])}"
            )
        gap = summary["classes"]["all"]["class_matched_rim_gap"]
        print(
            "rim defects: rim − interior within class: "
            + ", ".join(
                f"{k} {v['value']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]" for k, v in gap.items()
            )
        )

    run(stage, "cv rim defects")


if __name__ == "__main__":
    main()
