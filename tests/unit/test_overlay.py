"""Overlay pictures on synthetic arrays: the red overlay and panels the evaluation draws, and the
class-coloured overlay with a legend that the service's /overlay answers."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mtdefect.inference.overlay import (
    CLASS_COLOURS,
    OTHER_CLASS_COLOUR,
    OUTLINE,
    class_overlay,
    overlay,
    panel,
)

APP_JS = Path(__file__).resolve().parents[2] / "src" / "mtdefect" / "serving" / "page" / "app.js"


def region(x: int, y: int, w: int, h: int, name: str | None = None, score: float = 0.9):
    """Duck-typed like postprocess.Region (bbox, area, score, class_name)."""
    return SimpleNamespace(bbox=(x, y, w, h), area=w * h, score=score, class_name=name)


@pytest.fixture
def scene():
    gray = np.full((60, 90), 100, dtype=np.uint8)
    mask = np.zeros_like(gray)
    mask[10:20, 10:25] = 255  # region A: bbox (10, 10, 15, 10)
    mask[35:50, 60:80] = 255  # region B: bbox (60, 35, 20, 15)
    return gray, mask


def blended(colour, value: int = 100, alpha: float = 0.45) -> np.ndarray:
    return (1 - alpha) * value + alpha * np.asarray(colour, dtype=np.float64)


def near(pixel: np.ndarray, expected) -> bool:
    """Equal up to the rounding of a float32 blend cast to uint8."""
    return bool(np.abs(pixel.astype(np.float64) - np.asarray(expected, dtype=np.float64)).max() <= 1.0)


def colours_in(picture: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in px) for px in picture.reshape(-1, 3)}


def test_overlay_tints_red_and_outlines_yellow(scene):
    gray, mask = scene
    out = overlay(gray, mask)
    assert out.shape == (60, 90, 3) and out.dtype == np.uint8
    assert near(out[15, 17], blended((255, 40, 40)))
    assert tuple(out[10, 10]) == tuple(OUTLINE)  # the region's border
    assert tuple(out[0, 0]) == (100, 100, 100)  # background untouched


def test_panel_is_image_truth_prediction_side_by_side(scene):
    gray, mask = scene
    out = panel(gray, mask, np.zeros_like(mask), gap=4)
    assert out.shape == (60, 3 * 90 + 2 * 4, 3)
    assert np.array_equal(out[:, 94:184], overlay(gray, mask))
    assert np.array_equal(out[:, 188:], np.repeat(gray[..., None], 3, axis=2))


def test_without_classes_class_overlay_is_the_red_overlay(scene):
    gray, mask = scene
    plain = overlay(gray, mask)
    assert np.array_equal(class_overlay(gray, mask, [region(10, 10, 15, 10), region(60, 35, 20, 15)]), plain)
    legacy = [SimpleNamespace(bbox=(10, 10, 15, 10), area=150, score=0.9)]  # a Region without class_name
    assert np.array_equal(class_overlay(gray, mask, legacy), plain)
    empty = np.zeros_like(mask)
    assert np.array_equal(class_overlay(gray, empty, []), np.repeat(gray[..., None], 3, axis=2))


def test_each_region_takes_its_class_colour_and_a_legend_is_appended(scene):
    gray, mask = scene
    out = class_overlay(gray, mask, [region(10, 10, 15, 10, "MT_Crack"), region(60, 35, 20, 15, "MT_Fray")])
    assert out.shape[1] == 90 and out.shape[0] > 60  # the legend strip below the image
    image, strip = out[:60], out[60:]
    crack, fray = np.array(CLASS_COLOURS["MT_Crack"]), np.array(CLASS_COLOURS["MT_Fray"])
    assert near(image[15, 17], blended(crack))
    assert near(image[42, 70], blended(fray))
    assert tuple(image[10, 10]) == tuple(crack)  # outlined in the class colour
    assert tuple(image[8, 12]) == tuple(crack)  # framed 2 px outside the bbox
    assert tuple(image[0, 0]) == (100, 100, 100)
    assert tuple(image[30, 45]) == (100, 100, 100)  # between the regions: untouched
    legend = colours_in(strip)
    assert tuple(crack) in legend and tuple(fray) in legend  # swatches of the classes present
    for name in ("MT_Blowhole", "MT_Break", "MT_Uneven"):
        assert CLASS_COLOURS[name] not in legend  # and only those
    assert len(legend) > 4  # anti-aliased text, not just swatches on a background


def test_unclassified_and_unknown_classes_keep_distinct_colours(scene):
    gray, mask = scene
    out = class_overlay(gray, mask, [region(10, 10, 15, 10, "MT_Other"), region(60, 35, 20, 15, None)])
    image, strip = out[:60], out[60:]
    other = np.array(OTHER_CLASS_COLOUR)
    assert near(image[15, 17], blended(other))
    assert near(image[42, 70], blended((255, 40, 40)))  # no class: the red tint
    assert tuple(image[35, 60]) == tuple(OUTLINE)
    assert OTHER_CLASS_COLOUR in colours_in(strip)


def test_region_matched_by_overlap_when_boxes_differ(scene):
    """A region whose box is not exactly a mask component still colours the component it overlaps."""
    gray, mask = scene
    out = class_overlay(gray, mask, [region(11, 11, 10, 5, "MT_Blowhole")])
    blow = np.array(CLASS_COLOURS["MT_Blowhole"])
    assert near(out[15, 17], blended(blow))
    assert near(out[42, 70], blended((255, 40, 40)))  # region B has no region entry: red


@pytest.mark.parametrize("shape", [(8, 8), (30, 400), (600, 40), (1200, 1600)])
def test_legend_fits_any_image_width(shape):
    gray = np.full(shape, 90, dtype=np.uint8)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[: shape[0] // 2, : shape[1] // 2] = 255
    regions = [region(0, 0, shape[1] // 2, shape[0] // 2, name) for name in CLASS_COLOURS]
    out = class_overlay(gray, mask, regions)
    assert out.shape[1] == shape[1] and out.shape[0] > shape[0] and out.dtype == np.uint8
    assert (
        np.array_equal(out[: shape[0], shape[1] - 1], overlay(gray, mask)[:, shape[1] - 1]) or shape[1] < 16
    )


def test_operator_page_uses_the_same_class_colours():
    if not APP_JS.exists():
        pytest.skip("operator page not present")
    text = APP_JS.read_text()
    for name, (r, g, b) in CLASS_COLOURS.items():
        assert re.search(rf'{name}\s*:\s*"#{r:02x}{g:02x}{b:02x}"', text, re.IGNORECASE), name
