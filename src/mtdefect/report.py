"""The evaluation report: what a CML comment posts on a pull request.

Inputs are the evaluate stage's outputs (``reports/metrics.json``, ``reports/plots/*.json``,
``reports/overlays/worst_*.png``); output is one Markdown file plus a folder of PNGs it links to
(relative paths, so ``cml comment create reports/report.md`` can upload them). Charts are drawn
with PIL: no plotting library needed.

    build_report("reports", "reports/report.md", "reports/report_assets", params={...})
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

FREE_CLASS = "MT_Free"
WORST_PATTERN = re.compile(r"^worst_(\d+)_(.+)\.png$")
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
GRID = (225, 225, 225)
AXIS = (60, 60, 60)
TEXT = (30, 30, 30)


# ----------------------------------------------------------------------------------------------- numbers


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for a table cell: fixed digits; missing or NaN → ``n/a``."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)


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


# ----------------------------------------------------------------------------------------------- charts


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: tuple[int, int, int] | None = None
    markers: bool = True


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^k, about ``count`` of them) within [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    magnitude = 10 ** math.floor(math.log10((high - low) / max(count, 1)))
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda s: abs((high - low) / s - count))
    ticks, index = [], math.ceil(low / step - 1e-9)
    while index * step <= high + step * 1e-6:
        ticks.append(round(index * step, 12))
        index += 1
    return ticks


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if abs(value) >= 1e5 or (0 < abs(value) < 1e-3):
        return f"{value:.0e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{min(decimals, 4)}f}"


def _limits(values: Iterable[float], given: tuple[float, float] | None) -> tuple[float, float]:
    if given is not None:
        return given
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high == low:
        pad = abs(high) * 0.1 or 0.5
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def line_chart(
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    size: tuple[int, int] = (560, 420),
    diagonal: bool = False,
    note: str | None = None,
    legend_at: str = "lower right",
) -> Image.Image:
    """A line chart with grid, ticks, axis labels and a legend (RGB image).

    ``legend_at``: "lower right", "upper right" or "center right"."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small, bold = _font(13), _font(11), _font(15)
    left, right, top, bottom = 64, 16, 34, 52
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    xlo, xhi = _limits((v for s in series for v in s.x), xlim)
    ylo, yhi = _limits((v for s in series for v in s.y), ylim)

    def px(x: float) -> float:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    xticks, yticks = nice_ticks(xlo, xhi), nice_ticks(ylo, yhi)
    for t in xticks:
        draw.line([(px(t), y0), (px(t), y1)], fill=GRID)
        label = _tick_label(t, xticks)
        w, _ = _text_size(draw, label, small)
        draw.text((px(t) - w / 2, y1 + 5), label, fill=TEXT, font=small)
    for t in yticks:
        draw.line([(x0, py(t)), (x1, py(t))], fill=GRID)
        label = _tick_label(t, yticks)
        w, h = _text_size(draw, label, small)
        draw.text((x0 - w - 6, py(t) - h / 2 - 2), label, fill=TEXT, font=small)
    draw.rectangle([x0, y0, x1, y1], outline=AXIS)
    if diagonal:
        draw.line([(px(max(xlo, ylo)), py(max(xlo, ylo))), (px(min(xhi, yhi)), py(min(xhi, yhi)))],
                  fill=(170, 170, 170), width=1)

    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        points = [(px(x), py(y)) for x, y in zip(s.x, s.y) if math.isfinite(x) and math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2, joint="curve")
        if s.markers or len(points) == 1:
            for x, y in points:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)

    w, _ = _text_size(draw, title, bold)
    draw.text(((width - w) / 2, 8), title, fill=TEXT, font=bold)
    w, _ = _text_size(draw, xlabel, font)
    draw.text(((x0 + x1 - w) / 2, height - 22), xlabel, fill=TEXT, font=font)
    w, h = _text_size(draw, ylabel, font)
    label = Image.new("RGB", (w + 4, h + 6), "white")
    ImageDraw.Draw(label).text((2, 0), ylabel, fill=TEXT, font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (6, int((y0 + y1 - label.height) / 2)))

    legend = [(s.label, s.color or PALETTE[i % len(PALETTE)]) for i, s in enumerate(series) if s.label]
    if note:
        legend.append((note, None))
    if legend:
        line_h = 16
        box_w = max(_text_size(draw, text, small)[0] for text, _ in legend) + 30
        box_h = line_h * len(legend) + 4
        bx = x1 - box_w - 8
        by = {"upper right": y0 + 8, "center right": (y0 + y1 - box_h) / 2}.get(legend_at, y1 - box_h - 6)
        draw.rectangle([bx, by, bx + box_w, by + box_h], fill="white", outline=GRID)
        for j, (text, color) in enumerate(legend):
            ty = by + 4 + j * line_h
            if color is not None:
                draw.line([(bx + 6, ty + 7), (bx + 20, ty + 7)], fill=color, width=3)
            draw.text((bx + 26, ty), text, fill=TEXT, font=small)
    return image


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str,
              size: tuple[int, int] = (560, 0), xlim: tuple[float, float] = (0.0, 1.0)) -> Image.Image:
    """Horizontal bars, one per label, value printed at the bar's end (RGB image)."""
    row = 28
    width = size[0]
    height = size[1] or 70 + row * max(len(labels), 1) + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small, bold = _font(13), _font(11), _font(15)
    label_w = max((_text_size(draw, text, font)[0] for text in labels), default=0) + 16
    x0, x1, y0 = label_w, width - 56, 40
    y1 = y0 + row * len(labels)
    ticks = nice_ticks(*xlim)
    for t in ticks:
        x = x0 + (t - xlim[0]) / (xlim[1] - xlim[0]) * (x1 - x0)
        draw.line([(x, y0), (x, y1)], fill=GRID)
        text = _tick_label(t, ticks)
        w, _ = _text_size(draw, text, small)
        draw.text((x - w / 2, y1 + 4), text, fill=TEXT, font=small)
    for i, (text, value) in enumerate(zip(labels, values)):
        top = y0 + i * row + 5
        box = draw.textbbox((0, 0), text, font=font)
        draw.text((x0 - (box[2] - box[0]) - 8, top + (row - 10 - (box[3] - box[1])) / 2 - box[1]), text,
                  fill=TEXT, font=font)
        if value is None or not math.isfinite(value):
            draw.text((x0 + 4, top + 2), "n/a", fill=AXIS, font=small)
            continue
        clipped = min(max(value, xlim[0]), xlim[1])
        end = x0 + (clipped - xlim[0]) / (xlim[1] - xlim[0]) * (x1 - x0)
        draw.rectangle([x0, top, max(end, x0 + 1), top + row - 10], fill=PALETTE[0])
        draw.text((end + 4, top + 2), f"{value:.3f}", fill=TEXT, font=small)
    draw.line([(x0, y0), (x0, y1)], fill=AXIS)
    w, _ = _text_size(draw, title, bold)
    draw.text(((width - w) / 2, 10), title, fill=TEXT, font=bold)
    w, _ = _text_size(draw, xlabel, font)
    draw.text(((x0 + x1 - w) / 2, y1 + 20), xlabel, fill=TEXT, font=font)
    return image


def read_tsv(path: str | Path) -> tuple[list[float], list[float]]:
    """A DVCLive ``step<TAB>value`` file → (steps, values)."""
    xs, ys = [], []
    lines = Path(path).read_text().splitlines()
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip():
            xs.append(float(parts[0]))
            ys.append(float(parts[-1]))
    return xs, ys


def training_curves(live_dir: str | Path, size: tuple[int, int] = (560, 380)) -> Image.Image:
    """Train/val loss and val Dice from a DVCLive folder (``plots/metrics/{train,val}/*.tsv``)."""
    metrics = Path(live_dir) / "plots" / "metrics"
    series = []
    for name, label in (("train/loss.tsv", "train loss"), ("val/loss.tsv", "val loss"), ("val/dice.tsv", "val Dice")):
        if (metrics / name).exists():
            xs, ys = read_tsv(metrics / name)
            series.append(Series(label, xs, ys, markers=len(xs) < 40))
    if not series:
        raise FileNotFoundError(f"no DVCLive curves under {metrics}")
    return line_chart(series, "Training curves", "step", "loss / Dice", size=size, legend_at="center right")


# ----------------------------------------------------------------------------------------------- report


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path} not found: run the evaluate stage first")
    return json.loads(path.read_text())


def worst_overlays(overlay_dir: Path, limit: int) -> list[tuple[int, str, Path]]:
    """``worst_NN_<stem>.png`` files, best rank first: (rank, stem, path)."""
    found = []
    for path in overlay_dir.glob("worst_*.png") if overlay_dir.is_dir() else []:
        match = WORST_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return sorted(found)[: max(limit, 0)]


def _copy_scaled(src: Path, dst: Path, max_width: int) -> None:
    with Image.open(src) as picture:
        if picture.width > max_width:
            height = round(picture.height * max_width / picture.width)
            picture = picture.convert("RGB").resize((max_width, height), Image.Resampling.LANCZOS)
        picture.save(dst, optimize=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
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
) -> str:
    """The report's Markdown; ``assets`` maps chart names to relative paths, ``worst`` is (rank, stem, path)."""
    test = metrics["test"]
    detection = test.get("detection", {})
    lines = [f"# {title}", ""]
    if params:
        lines += ["**Run:** " + " · ".join(f"`{k}` = {v}" for k, v in params.items()), ""]
    lines += [
        (f"Test split: {test.get('images', 'n/a')} images · tile decision: score (window "
         f"{test.get('score_window', 1)} px) ≥ {fmt(test.get('decision_threshold'), 4)} · mask: pixel threshold "
         f"{fmt(test.get('threshold'), 2)}, min region {test.get('min_region_area', 'n/a')} px "
         "(all chosen on validation)."),
        "",
        "## Test metrics",
        "",
    ]
    rows = [
        ("Dice (pooled pixels)", fmt(test.get("dice"))),
        ("IoU (pooled pixels)", fmt(test.get("iou"))),
        (f"Detection recall ({detection.get('n_defective', '?')} defective tiles)", fmt(detection.get("recall"))),
        (f"False-alarm rate ({detection.get('n_free', '?')} defect-free tiles)",
         fmt(detection.get("false_alarm_rate"))),
        ("Detection AUROC", fmt(detection.get("auroc"))),
    ]
    if ap is not None:
        rows.append(("Detection average precision", fmt(ap)))
    if "free_clean_rate" in test:
        rows.append(("Defect-free tiles left clean", fmt(test.get("free_clean_rate"))))
    lines += _table(("Metric", "Value"), rows, "lr") + [""]

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
    lines += _table(("Class", "Test images", "Dice (pooled)", "Mean image Dice"), class_rows, "lrrr") + [""]
    if "per_class" in assets:
        lines += [f"![Per-class Dice]({assets['per_class']})", ""]

    if "pr" in assets or "roc" in assets:
        lines += ["## Detection curves (image level)", ""]
        pictures = [f"![Precision-recall curve]({assets['pr']})" if "pr" in assets else "",
                    f"![ROC curve]({assets['roc']})" if "roc" in assets else ""]
        lines += [" ".join(p for p in pictures if p), ""]

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
    reports_dir, out_md, assets_dir = Path(reports_dir), Path(out_md), Path(assets_dir)
    metrics = _read_json(reports_dir / "metrics.json")
    if "test" not in metrics:
        raise ValueError(f"{reports_dir / 'metrics.json'} has no 'test' section")
    plots = reports_dir / "plots"
    pr = _read_json(plots / "pr.json", [])
    roc = _read_json(plots / "roc.json", [])
    per_class_rows = _read_json(plots / "per_class_dice.json", [])
    per_image = _read_json(plots / "per_image.json", [])

    assets_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{assets_dir.name}.", dir=assets_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the renamed folder is an ordinary output
    try:
        files: dict[str, str] = {}
        ap = None
        if pr:
            ap = average_precision(pr)
            points = sorted(pr, key=lambda p: (p["recall"], -p["precision"]))
            series = [Series("detector", [p["recall"] for p in points], [p["precision"] for p in points])]
            detection = metrics["test"].get("detection", {})
            n_def, n_free = detection.get("n_defective"), detection.get("n_free")
            note = f"AP {ap:.3f}"
            if isinstance(n_def, int) and isinstance(n_free, int) and n_def + n_free:
                base = n_def / (n_def + n_free)  # a detector guessing at random has this precision
                series.append(Series("chance", [0.0, 1.0], [base, base], color=(170, 170, 170), markers=False))
                note += f" (chance {base:.2f})"
            chart = line_chart(series, "Precision-recall (image level)", "recall", "precision",
                               xlim=(0.0, 1.02), ylim=(0.0, 1.02), note=note)
            chart.save(staging / "pr.png", optimize=True)
            files["pr"] = "pr.png"
        if roc:
            auroc = metrics["test"].get("detection", {}).get("auroc")
            if not isinstance(auroc, (int, float)) or not math.isfinite(auroc):
                auroc = trapezoid_auc([p["fpr"] for p in roc], [p["tpr"] for p in roc])
            points = sorted(roc, key=lambda p: (p["fpr"], p["tpr"]))
            chart = line_chart([Series("detector", [p["fpr"] for p in points], [p["tpr"] for p in points])],
                               "ROC (image level)", "false-alarm rate", "recall",
                               xlim=(0.0, 1.02), ylim=(0.0, 1.02), diagonal=True, note=f"AUROC {auroc:.3f}")
            chart.save(staging / "roc.png", optimize=True)
            files["roc"] = "roc.png"
        if per_class_rows:
            chart = bar_chart([r["class"].removeprefix("MT_") for r in per_class_rows],
                              [float(r["dice"]) if r.get("dice") is not None else float("nan") for r in per_class_rows],
                              "Per-class Dice (test)", "Dice")
            chart.save(staging / "per_class_dice.png", optimize=True)
            files["per_class"] = "per_class_dice.png"
        worst = []
        for rank, stem, path in worst_overlays(reports_dir / "overlays", worst_n):
            _copy_scaled(path, staging / path.name, max_image_width)
            worst.append((rank, stem, path.name))

        link = Path(os.path.relpath(assets_dir, out_md.parent)).as_posix()
        assets = {key: f"{link}/{name}" for key, name in files.items()}
        worst_links = [(rank, stem, f"{link}/{name}") for rank, stem, name in worst]
        markdown = render_markdown(metrics, per_image, assets, worst_links, params=params, ap=ap)

        shutil.rmtree(assets_dir, ignore_errors=True)
        staging.rename(assets_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_md.name}.", dir=out_md.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(markdown)
    os.replace(tmp, out_md)
    return out_md


if __name__ == "__main__":  # python -m mtdefect.report dvclive docs/img/training_curves.png
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m mtdefect.report <dvclive dir> <out.png>   (train/val loss and val Dice)")
    training_curves(sys.argv[1]).save(sys.argv[2], optimize=True)
    print(f"wrote {sys.argv[2]}")
