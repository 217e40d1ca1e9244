"""The leave-one-defect-class-out table, from ``reports/cv/unseen.json`` (``cv/dvc.yaml:unseen``): for
each defect class, a model trained without any image of it scores every image of it against held-out
clean tiles — what the line does with a defect kind it never saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtdefect.docs_tables.common import fmt, read_json, table
from mtdefect.docs_tables.cv import with_interval

TARGET = 0.70  # issue #21: recall at ≤ 1 % false alarms for every class left out


def unseen_row(name: str, entry: dict[str, Any]) -> list[str]:
    recall = (entry.get("recall_at_1pct_fa") or {}).get("value")
    return [
        name.removeprefix("MT_"),
        f"{entry['images']} ({entry.get('tiles', '?')} tiles)",
        f"{entry['clean_images']} ({entry.get('clean_tiles', '?')} tiles)",
        with_interval(entry.get("recall_at_1pct_fa")),
        with_interval(entry.get("tile_recall_at_1pct_fa")),
        with_interval(entry.get("auroc")),
        f"{fmt(entry.get('recall_at_decision'))} @ {fmt(entry.get('false_alarm_rate_at_decision'))}",
        "—" if recall is None else ("met" if recall >= TARGET else "missed"),
    ]


def unseen_table(root: Path) -> str:
    """The table body (between the ``unseen`` markers); a note when the run is not committed."""
    path = root / "reports" / "cv" / "unseen.json"
    if not path.exists():
        return "_No leave-one-class-out run is committed yet (`dvc exp run cv/dvc.yaml:unseen`)._\n"
    report = read_json(path)
    recipe = report.get("recipe") or {}
    minutes = [s / 60 for s in (report.get("job_seconds") or {}).values() if s]
    header = [
        "class left out of training",
        "its images (tiles)",
        "held-out clean images (tiles)",
        f"recall @ ≤ {report.get('max_false_alarm_rate', 0.01):.0%} FA",
        "per tile (median of views)",
        "AUROC",
        "recall @ the model's decision (FA)",
        f"target ≥ {TARGET:.2f}",
    ]
    rows = [unseen_row(name, entry) for name, entry in sorted(report["classes"].items())]
    lines = table(header, rows)
    lines.append("")
    lines.append(
        f"Recipe: {recipe.get('encoder', '?')}, crop {recipe.get('crop_size', '?')}, "
        f"{recipe.get('max_epochs', '?')} epochs, paste {recipe.get('paste_p') or 0:g}, "
        f"seed {recipe.get('seed', '?')}; "
        f"{len(minutes)} trainings"
        + (f", {min(minutes):.0f}–{max(minutes):.0f} min each" if minutes else "")
        + ". 95 % intervals resample whole tile groups."
    )
    return "\n".join(lines) + "\n"
