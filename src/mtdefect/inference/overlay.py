"""Pictures for people: the image with defects tinted and outlined, and image | truth | prediction panels.

``overlay`` tints every defect pixel red (the evaluation panels use it). ``class_overlay`` (what the
service's /overlay answers) colours each region by its defect class, frames it, and appends a legend
strip under the image naming the classes present; regions without a class get ``overlay``'s red, and
a picture without any classified region is exactly ``overlay``'s (same size, no strip).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

TINT = np.array([255, 40, 40], dtype=np.float32)
OUTLINE = np.array([255, 255, 0], dtype=np.uint8)

# One fixed colour per defect class (Okabe-Ito palette: distinguishable with the common colour-vision
# deficiencies). The operator page (serving/page/app.js, CLASS_COLOURS) uses the same values.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "MT_Blowhole": (213, 94, 0),  # vermillion
    "MT_Break": (204, 121, 167),  # reddish purple
    "MT_Crack": (86, 180, 233),  # sky blue
    "MT_Fray": (0, 158, 115),  # bluish green
    "MT_Uneven": (230, 159, 0),  # orange
}
OTHER_CLASS_COLOUR: tuple[int, int, int] = (240, 228, 66)  # yellow: a class name not in the table
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
LEGEND_BACKGROUND = (24, 24, 24)
LEGEND_TEXT = (240, 240, 240)


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """HxW uint8 image + HxW {0,255} mask → HxWx3 uint8 with defects tinted red and outlined yellow."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    inside = mask > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * TINT
    out = rgb.clip(0, 255).astype(np.uint8)
    edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
    out[edge] = OUTLINE
    return out


def panel(gray: np.ndarray, truth: np.ndarray, prediction: np.ndarray, gap: int = 4) -> np.ndarray:
    """image | truth overlay | prediction overlay, side by side (HxWx3 uint8)."""
    h = gray.shape[0]
    spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
    image = np.repeat(gray[..., None], 3, axis=2)
    return np.concatenate([image, spacer, overlay(gray, truth), spacer, overlay(gray, prediction)], axis=1)


def class_colour(name: str) -> tuple[int, int, int]:
    return CLASS_COLOURS.get(name, OTHER_CLASS_COLOUR)


def _class_of(region: Any) -> str | None:
    name = getattr(region, "class_name", None)
    return str(name) if name else None


def _bbox_overlap(a: Sequence[int], b: Sequence[int]) -> int:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    return max(w, 0) * max(h, 0)


def _component_classes(mask: np.ndarray, regions: Sequence[Any]) -> tuple[np.ndarray, list[str | None]]:
    """Label the mask's 8-connected components and give each the class of its region: the region
    with the same bounding box (postprocess's regions are exactly those components), else the
    region whose box overlaps the component's box most, else none."""
    labels, count = ndimage.label(mask > 0, structure=EIGHT_CONNECTED)
    by_box = {tuple(int(v) for v in r.bbox): _class_of(r) for r in regions}
    classes: list[str | None] = [None] * (count + 1)
    for i, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        ys, xs = found
        box = (int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start))
        if box in by_box:
            classes[i] = by_box[box]
            continue
        best = max(regions, key=lambda r: _bbox_overlap(box, r.bbox), default=None)
        if best is not None and _bbox_overlap(box, best.bbox) > 0:
            classes[i] = _class_of(best)
    return labels, classes


def _frame(out: np.ndarray, bbox: Sequence[int], colour: np.ndarray, pad: int = 2) -> None:
    """A 1-pixel rectangle around bbox (padded, clipped to the image): small defects stay visible."""
    height, width = out.shape[:2]
    x, y, w, h = (int(v) for v in bbox)
    x0, y0 = max(x - pad, 0), max(y - pad, 0)
    x1, y1 = min(x + w - 1 + pad, width - 1), min(y + h - 1 + pad, height - 1)
    out[y0, x0 : x1 + 1] = colour
    out[y1, x0 : x1 + 1] = colour
    out[y0 : y1 + 1, x0] = colour
    out[y0 : y1 + 1, x1] = colour


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def legend_strip(width: int, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A dark band ``width`` pixels wide: one colour swatch + label per entry, wrapped into rows."""
    from PIL import Image, ImageDraw

    size = int(np.clip(width // 28, 11, 40))
    font = _font(size)
    pad, swatch, gap = max(size // 3, 3), size, size
    row_height = size + 2 * pad
    placed: list[tuple[int, int, str, tuple[int, int, int]]] = []
    x, row = pad, 0
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for label, colour in entries:
        text_width = int(measure.textlength(label, font=font))
        item = swatch + pad + text_width
        if x > pad and x + item > width - pad:
            x, row = pad, row + 1
        placed.append((x, row, label, colour))
        x += item + gap
    strip = Image.new("RGB", (width, (row + 1) * row_height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, row, label, colour in placed:
        top = row * row_height + pad
        draw.rectangle([x, top, x + swatch - 1, top + swatch - 1], fill=colour)
        draw.text((x + swatch + pad, top + swatch / 2), label, fill=LEGEND_TEXT, font=font, anchor="lm")
    return np.asarray(strip, dtype=np.uint8)


def class_overlay(
    gray: np.ndarray, mask: np.ndarray, regions: Sequence[Any], alpha: float = 0.45
) -> np.ndarray:
    """HxW uint8 image + HxW {0,255} mask + regions (objects with ``bbox`` and ``class_name``) →
    RGB uint8: each region tinted, outlined and framed in its class's colour (CLASS_COLOURS), with a
    legend strip below the image (``<class> (<regions>)`` per class present), so the picture is
    (H + strip) x W x 3 and its first H rows are the image. Pixels of a region without a class keep
    ``overlay``'s red tint and yellow outline; when no region has a class the answer is exactly
    ``overlay(gray, mask, alpha)``."""
    base = overlay(gray, mask, alpha)
    named = [_class_of(r) for r in regions]
    if not any(named):
        return base
    labels, classes = _component_classes(mask, regions)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    out = base
    for name in sorted({c for c in classes if c}):
        colour = np.array(class_colour(name), dtype=np.float32)
        ids = [i for i, c in enumerate(classes) if c == name]
        inside = np.isin(labels, ids)
        tinted = ((1 - alpha) * rgb[inside] + alpha * colour).clip(0, 255).astype(np.uint8)
        out[inside] = tinted
        edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
        out[edge] = colour.astype(np.uint8)
    for region, name in zip(regions, named):
        if name:
            _frame(out, region.bbox, np.array(class_colour(name), dtype=np.uint8))
    counts = Counter(n for n in named if n)
    order = [n for n in CLASS_COLOURS if n in counts] + sorted(n for n in counts if n not in CLASS_COLOURS)
    entries = [(f"{n} ({counts[n]})", class_colour(n)) for n in order]
    if len(named) != sum(counts.values()):
        entries.append((f"unclassified ({len(named) - sum(counts.values())})", tuple(int(v) for v in TINT)))
    return np.concatenate([out, legend_strip(out.shape[1], entries)], axis=0)
