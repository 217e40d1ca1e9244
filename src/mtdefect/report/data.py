"""The report's inputs: the evaluate stage's files, read and checked, and the numbers derived from them."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FREE_CLASS = "MT_Free"
WORST_PATTERN = re.compile(r"^worst_(\d+)_(.+)\.png$")


@dataclass
class ReportInputs:
    """Everything the report draws from; optional files that are missing read as empty lists."""

    metrics: dict[str, Any]
    pr: list[dict[str, float]] = field(default_factory=list)
    roc: list[dict[str, float]] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[dict[str, str]] = field(default_factory=list)  # {"actual": class, "predicted": class}
    worst: list[tuple[int, str, Path]] = field(default_factory=list)  # (rank, stem, overlay PNG)

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics["test"]

    @property
    def detection(self) -> dict[str, Any]:
        return self.test.get("detection", {})


def read_json(path: Path, default: Any = None) -> Any:
    """The file's JSON; ``default`` when it is missing, or FileNotFoundError when no default is given."""
    if not path.exists():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path} not found: run the evaluate stage first")
    return json.loads(path.read_text())


def load_inputs(reports_dir: str | Path, worst_n: int = 6) -> ReportInputs:
    """``metrics.json`` (required, with a ``test`` section), ``plots/*.json`` and ``overlays/worst_*.png``."""
    reports_dir = Path(reports_dir)
    metrics = read_json(reports_dir / "metrics.json")
    if "test" not in metrics:
        raise ValueError(f"{reports_dir / 'metrics.json'} has no 'test' section")
    plots = reports_dir / "plots"
    return ReportInputs(
        metrics=metrics,
        pr=read_json(plots / "pr.json", []),
        roc=read_json(plots / "roc.json", []),
        per_class=read_json(plots / "per_class_dice.json", []),
        per_image=read_json(plots / "per_image.json", []),
        confusion=read_json(plots / "confusion.json", []),
        worst=worst_overlays(reports_dir / "overlays", worst_n),
    )


def worst_overlays(overlay_dir: Path, limit: int) -> list[tuple[int, str, Path]]:
    """``worst_NN_<stem>.png`` files, best rank first: (rank, stem, path)."""
    found = []
    for path in overlay_dir.glob("worst_*.png") if overlay_dir.is_dir() else []:
        match = WORST_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return sorted(found)[: max(limit, 0)]


def read_tsv(path: str | Path) -> tuple[list[float], list[float]]:
    """A DVCLive ``step<TAB>value`` file → (steps, values)."""
    xs, ys = [], []
    for line in Path(path).read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip():
            xs.append(float(parts[0]))
            ys.append(float(parts[-1]))
    return xs, ys


def average_precision(pr: Sequence[dict[str, float]]) -> float:
    """Step-wise AP (sum of recall increments times precision), points in any order."""
    points = sorted(((float(p["recall"]), float(p["precision"])) for p in pr), key=lambda rp: (rp[0], -rp[1]))
    ap, previous = 0.0, 0.0
    for recall, precision in points:
        if recall > previous:
            ap += (recall - previous) * precision
            previous = recall
    return ap


def trapezoid_auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    pairs = sorted(zip(xs, ys))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(pairs))


def chance_precision(detection: dict[str, Any]) -> float | None:
    """The precision of a detector guessing at random: the share of defective tiles (None if unknown)."""
    n_def, n_free = detection.get("n_defective"), detection.get("n_free")
    if isinstance(n_def, int) and isinstance(n_free, int) and n_def + n_free:
        return n_def / (n_def + n_free)
    return None


def confusion_counts(rows: Sequence[dict[str, str]]) -> tuple[list[str], list[list[int]]]:
    """(classes, counts) with ``counts[i][j]`` = tiles of class i predicted as class j; classes sorted,
    every class that appears as actual or predicted included."""
    classes = sorted({str(r["actual"]) for r in rows} | {str(r["predicted"]) for r in rows})
    index = {name: i for i, name in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for r in rows:
        counts[index[str(r["actual"])]][index[str(r["predicted"])]] += 1
    return classes, counts
