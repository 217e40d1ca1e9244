"""Put the report together: read the evaluate stage's outputs, draw the figures, copy the worst
panels, write the Markdown. The assets folder is replaced as a whole and the Markdown written last."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from mtdefect.fileio import write_text_atomic
from mtdefect.report import figures
from mtdefect.report.data import (
    average_precision,
    chance_precision,
    confusion_counts,
    load_inputs,
    trapezoid_auc,
)
from mtdefect.report.markdown import render_markdown


def build_report(
    reports_dir: str | Path,
    out_md: str | Path,
    assets_dir: str | Path,
    worst_n: int = 6,
    params: dict[str, Any] | None = None,
    max_image_width: int = 900,
) -> Path:
    """Read the evaluate stage's outputs, draw the charts, copy the worst panels, write the Markdown.

    The assets folder is replaced as a whole (built beside it, then renamed); the Markdown is written
    last, through a temporary file, so a failed run leaves no half-written report.
    """
    out_md, assets_dir = Path(out_md), Path(assets_dir)
    inputs = load_inputs(reports_dir, worst_n)

    assets_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{assets_dir.name}.", dir=assets_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the renamed folder is an ordinary output
    try:
        files: dict[str, str] = {}
        ap = None
        confusion = None
        if inputs.pr:
            ap = average_precision(inputs.pr)
            figure = figures.pr_curve(inputs.pr, ap, chance_precision(inputs.detection))
            files["pr"] = figures.save_png(figure, staging / "pr.png").name
        if inputs.roc:
            auroc = inputs.detection.get("auroc")
            if not isinstance(auroc, (int, float)) or not math.isfinite(auroc):
                auroc = trapezoid_auc([p["fpr"] for p in inputs.roc], [p["tpr"] for p in inputs.roc])
            files["roc"] = figures.save_png(figures.roc_curve(inputs.roc, auroc), staging / "roc.png").name
        if inputs.per_class:
            figure = figures.per_class_dice(inputs.per_class)
            files["per_class"] = figures.save_png(figure, staging / "per_class_dice.png").name
        if inputs.confusion:
            confusion = confusion_counts(inputs.confusion)
            figure = figures.confusion_matrix(*confusion)
            files["confusion"] = figures.save_png(figure, staging / "confusion.png").name
        worst = []
        for rank, stem, path in inputs.worst:
            copy_scaled(path, staging / path.name, max_image_width)
            worst.append((rank, stem, path.name))

        link = Path(os.path.relpath(assets_dir, out_md.parent)).as_posix()
        assets = {key: f"{link}/{name}" for key, name in files.items()}
        worst_links = [(rank, stem, f"{link}/{name}") for rank, stem, name in worst]
        markdown = render_markdown(
            inputs.metrics, inputs.per_image, assets, worst_links, params=params, ap=ap, confusion=confusion
        )

        shutil.rmtree(assets_dir, ignore_errors=True)
        staging.rename(assets_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return write_text_atomic(out_md, markdown)


def copy_scaled(src: Path, dst: Path, max_width: int) -> None:
    """Copy a PNG, scaled down (aspect kept) when it is wider than ``max_width``."""
    with Image.open(src) as picture:
        if picture.width > max_width:
            height = round(picture.height * max_width / picture.width)
            picture = picture.convert("RGB").resize((max_width, height), Image.Resampling.LANCZOS)
        picture.save(dst, optimize=True)
