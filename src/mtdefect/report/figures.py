"""The report's charts: one matplotlib figure per function, nothing saved until ``save_png``.

Figures are built with the object API (``matplotlib.figure.Figure``, no pyplot): no global state,
no GUI backend, safe to call from any thread or process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mtdefect.report.data import read_tsv

DPI = 100
UNIT = (0.0, 1.02)  # axes for rates and scores in [0, 1], the top point left visible
CHANCE_COLOR = "0.6"


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG; no timestamp or version in its metadata, so reruns give the same bytes."""
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return Path(path)


def pr_curve(pr: Sequence[dict[str, float]], ap: float, chance: float | None = None) -> Figure:
    """Precision against recall of the tile decision, with the average precision in the legend and,
    when known, the precision of a detector guessing at random."""
    figure = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = figure.add_subplot()
    points = sorted(pr, key=lambda p: (p["recall"], -p["precision"]))
    ax.plot(
        [p["recall"] for p in points],
        [p["precision"] for p in points],
        marker="o",
        markersize=3,
        label=f"detector (AP {ap:.3f})",
        gid="detector",
    )
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle="--", label=f"chance ({chance:.2f})", gid="chance")
    ax.set(title="Precision-recall (image level)", xlabel="recall", ylabel="precision", xlim=UNIT, ylim=UNIT)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return figure


def roc_curve(roc: Sequence[dict[str, float]], auroc: float) -> Figure:
    """Recall against false-alarm rate of the tile score, the chance diagonal and the AUROC."""
    figure = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = figure.add_subplot()
    points = sorted(roc, key=lambda p: (p["fpr"], p["tpr"]))
    ax.plot(
        [p["fpr"] for p in points],
        [p["tpr"] for p in points],
        marker="o",
        markersize=3,
        label=f"detector (AUROC {auroc:.3f})",
        gid="detector",
    )
    ax.plot([0, 1], [0, 1], color=CHANCE_COLOR, linestyle="--", linewidth=1, label="chance", gid="chance")
    ax.set(title="ROC (image level)", xlabel="false-alarm rate", ylabel="recall", xlim=UNIT, ylim=UNIT)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return figure


def per_class_dice(rows: Sequence[dict[str, Any]]) -> Figure:
    """One horizontal bar per class (first class on top), its Dice printed at the bar's end; a class
    without a Dice (NaN or missing) gets no bar and the label n/a."""
    labels = [str(r["class"]).removeprefix("MT_") for r in rows]
    values = [_finite(r.get("dice")) for r in rows]
    figure = Figure(figsize=(5.6, 1.2 + 0.35 * max(len(rows), 1)), layout="constrained")
    ax = figure.add_subplot()
    positions = list(range(len(rows)))
    bars = ax.barh(positions, [v if v is not None else 0.0 for v in values], gid="dice")
    ax.bar_label(bars, labels=[f"{v:.3f}" if v is not None else "n/a" for v in values], padding=3, fontsize=9)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    ax.set(title="Per-class Dice (test)", xlabel="Dice", xlim=(0.0, 1.12))
    ax.grid(axis="x", alpha=0.3)
    return figure


def confusion_matrix(classes: Sequence[str], counts: Sequence[Sequence[int]]) -> Figure:
    """Tiles by actual class (rows) and predicted class (columns), each cell's count written in it."""
    names = [c.removeprefix("MT_") for c in classes]
    size = 2.4 + 0.6 * len(classes)
    figure = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0, gid="counts")
    peak = max((max(row) for row in counts), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if peak and value > peak / 2 else "black",
            )
    ticks = list(range(len(classes)))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set(title="Tile class: actual vs predicted (test)", xlabel="predicted", ylabel="actual")
    figure.colorbar(image, ax=ax, shrink=0.8, label="tiles")
    return figure


def training_curves(live_dir: str | Path) -> Figure:
    """Train/val loss and val Dice from a DVCLive folder (``plots/metrics/{train,val}/*.tsv``)."""
    metrics = Path(live_dir) / "plots" / "metrics"
    curves = [
        (name, label)
        for name, label in (
            ("train/loss.tsv", "train loss"),
            ("val/loss.tsv", "val loss"),
            ("val/dice.tsv", "val Dice"),
        )
        if (metrics / name).exists()
    ]
    if not curves:
        raise FileNotFoundError(f"no DVCLive curves under {metrics}")
    figure = Figure(figsize=(5.6, 3.8), layout="constrained")
    ax = figure.add_subplot()
    for name, label in curves:
        xs, ys = read_tsv(metrics / name)
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3, label=label, gid=label)
    ax.set(title="Training curves", xlabel="step", ylabel="loss / Dice")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    return figure


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
