"""The report's Markdown: tables of the test metrics, per-class numbers, links to the figures and the
worst predictions. Pure text in, text out (no files read or written here)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mtdefect.report.data import FREE_CLASS


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for a table cell: fixed digits; missing or NaN → ``n/a``."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(
    metrics: dict,
    per_image: list[dict],
    assets: dict[str, str],
    worst: list[tuple[int, str, str]],
    params: dict[str, Any] | None = None,
    ap: float | None = None,
    title: str = "Magnetic-tile defect segmentation: test report",
    confusion: tuple[Sequence[str], Sequence[Sequence[int]]] | None = None,
) -> str:
    """The report's Markdown; ``assets`` maps chart names ("per_class", "pr", "roc", "confusion") to
    relative paths, ``worst`` is (rank, stem, path), ``confusion`` the (classes, counts) the
    confusion-matrix figure shows."""
    test = metrics["test"]
    detection = test.get("detection", {})
    lines = [f"# {title}", ""]
    if params:
        lines += ["**Run:** " + " · ".join(f"`{k}` = {v}" for k, v in params.items()), ""]
    decision = f"score (window {test.get('score_window', 1)} px) ≥ {fmt(test.get('decision_threshold'), 4)}"
    mask = (
        f"pixel threshold {fmt(test.get('threshold'), 2)}, min region {test.get('min_region_area', 'n/a')} px"
    )
    lines += [
        f"Test split: {test.get('images', 'n/a')} images · tile decision: {decision} · mask: {mask} "
        "(all chosen on validation).",
        "",
        "## Test metrics",
        "",
    ]
    rows = [
        ("Dice (pooled pixels)", fmt(test.get("dice"))),
        ("IoU (pooled pixels)", fmt(test.get("iou"))),
        (
            f"Detection recall ({detection.get('n_defective', '?')} defective tiles)",
            fmt(detection.get("recall")),
        ),
        (
            f"False-alarm rate ({detection.get('n_free', '?')} defect-free tiles)",
            fmt(detection.get("false_alarm_rate")),
        ),
        ("Detection AUROC", fmt(detection.get("auroc"))),
    ]
    if ap is not None:
        rows.append(("Detection average precision", fmt(ap)))
    if "free_clean_rate" in test:
        rows.append(("Defect-free tiles left clean", fmt(test.get("free_clean_rate"))))
    lines += table(("Metric", "Value"), rows, "lr") + [""]

    by_class: dict[str, list[float]] = {}
    for item in per_image:
        by_class.setdefault(item.get("class", "?"), []).append(float(item.get("dice", float("nan"))))
    per_class = test.get("per_class_dice", {})
    class_rows = []
    for name in sorted(set(per_class) | set(by_class)):
        dices = [d for d in by_class.get(name, []) if math.isfinite(d)]
        if name == FREE_CLASS:
            pooled = f"clean {fmt(test.get('free_clean_rate'))}"
            mean = "–"
        else:
            pooled = fmt(per_class.get(name))
            mean = fmt(sum(dices) / len(dices)) if dices else "n/a"
        class_rows.append((name.removeprefix("MT_"), str(len(by_class.get(name, []))), pooled, mean))
    lines += ["## Per class", ""]
    lines += table(("Class", "Test images", "Dice (pooled)", "Mean image Dice"), class_rows, "lrrr") + [""]
    if "per_class" in assets:
        lines += [f"![Per-class Dice]({assets['per_class']})", ""]

    if "pr" in assets or "roc" in assets:
        lines += ["## Detection curves (image level)", ""]
        pictures = [
            f"![Precision-recall curve]({assets['pr']})" if "pr" in assets else "",
            f"![ROC curve]({assets['roc']})" if "roc" in assets else "",
        ]
        lines += [" ".join(p for p in pictures if p), ""]

    if "confusion" in assets:
        lines += ["## Tile class (test)", ""]
        if confusion is not None:
            classes, counts = confusion
            total = sum(map(sum, counts))
            right = sum(counts[i][i] for i in range(len(classes)))
            share = fmt(right / total if total else None)
            lines += [f"{right} of {total} test tiles given their actual class ({share}).", ""]
        lines += [f"![Confusion matrix]({assets['confusion']})", ""]

    if worst:
        dice_by_stem = {Path(item["image"]).stem: item for item in per_image if "image" in item}
        lines += [
            f"## Worst {len(worst)} test predictions",
            "",
            "Each panel: image | ground truth | prediction (defects tinted red, outlined yellow).",
            "",
        ]
        for rank, stem, path in worst:
            item = dice_by_stem.get(stem, {})
            caption = f"{rank + 1}. `{item.get('image', stem)}`"
            if item.get("class") == FREE_CLASS:
                caption += f" — defect-free tile, {'false alarm' if item.get('defective') else 'clean'}"
                caption += f" (score {fmt(item.get('score'), 2)})"
            elif item:
                caption += f" — Dice {fmt(item.get('dice'))}, score {fmt(item.get('score'), 2)}, "
                caption += "detected" if item.get("defective") else "missed"
            lines += [f"**{caption}**", "", f"![worst {rank + 1}: {stem}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
