"""The head-refit screens' table (docs/MODEL_QUALITY.md), from every committed
``reports/cv/screen_*.json`` (``python -m mtdefect.screen.head_refit``): one row per variant, its
recall at ≤ 1 % false alarms on the decision's scale per image and per tile, its AUROC, and its
paired gain over the same screen's ``config`` row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtdefect.docs_tables.common import fmt, read_json, table
from mtdefect.docs_tables.cv import with_interval

# what a screen computed its scores with when its file does not say (the screens before session 18)
OLD_SCORE = "1 − P(free), float32, floor 1e-7"


def gain(entry: dict[str, Any]) -> str:
    g = (entry.get("gain_vs_config") or {}).get("recall_at_1pct_fa")
    if not g:
        return ""
    return f"{g['value']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"


def score_name(report: dict[str, Any]) -> str:
    score = report.get("defect_score")
    return "P(defect) summed, float64" if score else OLD_SCORE


def screen_rows(name: str, report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for variant, entry in report["variants"].items():
        s = entry["summary"]
        rows.append(
            [
                f"`{name}`",
                str(len(entry.get("chosen_l2") or [])),  # one L2 choice per fold model
                score_name(report),
                variant,
                with_interval(s.get("recall_at_1pct_fa")),
                fmt((s.get("tile_recall_at_1pct_fa") or {}).get("value")),
                fmt((s.get("auroc") or {}).get("value")),
                gain(entry),
            ]
        )
    return rows


def screen_table(root: Path) -> str:
    """The table body (between the ``screen`` markers); a note when no screen is committed."""
    reports = [
        (path.stem, read_json(path)) for path in sorted((root / "reports" / "cv").glob("screen_*.json"))
    ]
    reports = [(name, report) for name, report in reports if "variants" in report]  # a screen's own output
    if not reports:
        return "_No head-refit screen is committed yet (`python -m mtdefect.screen.head_refit`)._\n"
    header = [
        "screen (reports/cv/)",
        "fold models",
        "defect score",
        "variant",
        "recall @ ≤ 1 % FA per image",
        "per tile",
        "AUROC",
        "gain per image vs its config row",
    ]
    rows = [row for name, report in reports for row in screen_rows(name, report)]
    lines = table(header, rows)
    lines.append("")
    lines.append(
        "On the decision's scale (each fold model's scores as a robust z against its clean validation "
        "photographs), pooled; 95 % intervals resample whole tile groups; a gain is paired on the "
        "same photographs."
    )
    return "\n".join(lines) + "\n"
