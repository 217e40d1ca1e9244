"""Property tests for the one inference path (decode → preprocess → model → restore → postprocess).

Any image a client can send (sizes 8..300 px, every common PIL mode and bit depth, PNG/TIFF/BMP/JPEG,
EXIF orientation) decodes to an HxW uint8 array of the displayed size; preprocessing pads to the
stride; arbitrary logits come back as a mask of the input's size holding only 0 and 255, with
regions inside the image whose areas add up to the mask. A fake runner stands in for the network.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mtdefect.inference import PostprocessSettings, Predictor, PreprocessSettings, decode_image, postprocess
from mtdefect.inference.postprocess import find_regions, image_score, restore_probability, shows_regions
from mtdefect.inference.preprocess import preprocess
from mtdefect.inference.settings import ModelSettings

EXAMPLES = int(os.environ.get("MT_HYPOTHESIS_EXAMPLES", "50"))  # per property
PROFILE = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# format → the modes its PIL encoder writes (1-bit, 8-bit, palette, alpha, 16-bit, 32-bit int, float, CMYK)
MODES = {
    "PNG": ("1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "I;16"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
    "JPEG": ("L", "RGB", "CMYK"),
}
TIFF_COMPRESSION = (None, "tiff_lzw", "tiff_adobe_deflate", "packbits")
SWAPS = {5, 6, 7, 8}  # EXIF orientations that transpose width and height
SIDE = st.integers(min_value=8, max_value=300)


def synth_image(mode: str, height: int, width: int, seed: int, special: bool) -> Image.Image:
    """A PIL image of ``mode`` with values over the mode's whole range (and NaN/±inf for floats)."""
    rng = np.random.default_rng(seed)
    base = mode.split("+")[0]
    if base in ("1", "L", "P"):
        img = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        if base == "1":
            return img.convert("1")
        if base == "P":
            img = img.convert("P")
            if mode.endswith("transparency"):
                img.info["transparency"] = int(rng.integers(0, 256))
        return img
    if base in ("LA", "RGB", "RGBA", "CMYK"):
        bands = [Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)) for _ in base]
        return Image.merge(base, bands)
    if base in ("I;16", "I;16B"):
        arr = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        return Image.fromarray(arr.astype(">u2") if base == "I;16B" else arr)
    if base == "I":
        high = 65536 if special else 256
        return Image.fromarray(rng.integers(-1000 if special else 0, high, (height, width)).astype(np.int32))
    if base == "F":
        arr = rng.random((height, width), dtype=np.float32) * (1000.0 if special else 1.0)
        if special:
            arr.flat[rng.integers(0, arr.size, 3)] = [np.nan, np.inf, -np.inf]
        return Image.fromarray(arr)
    raise AssertionError(mode)


def encode(
    fmt: str,
    mode: str,
    height: int,
    width: int,
    seed: int = 0,
    special: bool = False,
    orientation: int | None = None,
    compression: str | None = None,
    quality: int = 90,
):
    """→ (bytes, displayed (height, width), the source PIL image)."""
    img = synth_image(mode, height, width, seed, special)
    kwargs: dict = {}
    if orientation is not None and fmt in ("PNG", "JPEG"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    if orientation is not None and fmt == "TIFF":
        kwargs["tiffinfo"] = {0x0112: orientation}
    packbits_unsupported = compression == "packbits" and img.mode in ("I", "F", "I;16", "I;16B")
    if fmt == "TIFF" and compression and not packbits_unsupported:
        kwargs["compression"] = compression
    if fmt == "JPEG":
        kwargs["quality"] = quality
    if "transparency" in img.info:
        kwargs["transparency"] = img.info["transparency"]
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    expected = (width, height) if orientation in SWAPS else (height, width)
    return out.getvalue(), expected, img


@st.composite
def encoded_images(draw):
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    height, width = draw(SIDE), draw(SIDE)
    orientation = draw(st.sampled_from([None, 1, 2, 3, 4, 5, 6, 7, 8])) if fmt != "BMP" else None
    data, expected, img = encode(
        fmt,
        mode,
        height,
        width,
        draw(st.integers(0, 2**32 - 1)),
        draw(st.booleans()),
        orientation,
        draw(st.sampled_from(TIFF_COMPRESSION)),
        draw(st.integers(50, 95)),
    )
    return data, expected, fmt, mode, img, orientation


def orient(array: np.ndarray, orientation: int | None) -> np.ndarray:
    """EXIF orientation applied by hand (independent of PIL's ImageOps.exif_transpose)."""
    return {
        None: lambda a: a,
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.T,
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].T,
        8: lambda a: np.rot90(a, 1),
    }[orientation](array)


def check_decoded(data: bytes, expected, fmt: str, mode: str, img: Image.Image, orientation) -> None:
    gray = decode_image(data)
    where = f"{fmt} {mode} orientation={orientation} {img.size}"
    assert gray.dtype == np.uint8 and gray.ndim == 2, where
    assert gray.shape == expected, (where, gray.shape, expected)
    assert gray.flags["C_CONTIGUOUS"], where
    if fmt == "JPEG":
        return
    if mode in ("1", "L", "P", "RGB", "CMYK"):  # lossless formats: the exact luminance, turned upright
        np.testing.assert_array_equal(gray, orient(np.asarray(img.convert("L")), orientation), err_msg=where)
    if mode in ("I;16", "I;16B"):  # 16-bit: the high byte
        high = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        np.testing.assert_array_equal(gray, orient(high, orientation), err_msg=where)


@PROFILE
@given(encoded_images())
def test_any_image_decodes_to_uint8_of_its_displayed_size(case) -> None:
    check_decoded(*case)


SWEEP = (((8, 300), None, False), ((299, 9), 6, True), ((33, 17), 3, True))  # (h, w), orientation, extremes


def test_every_format_mode_and_orientation_decodes() -> None:
    """The same property, swept deterministically so every (format, mode) pair is covered on every run."""
    count = 0
    for fmt, modes in sorted(MODES.items()):
        for mode in modes:
            for (h, w), orientation, special in SWEEP:
                if fmt == "BMP":
                    orientation = None
                data, expected, img = encode(
                    fmt,
                    mode,
                    h,
                    w,
                    seed=count,
                    special=special,
                    orientation=orientation,
                    compression="tiff_lzw",
                )
                check_decoded(data, expected, fmt, mode, img, orientation)
                count += 1
    assert count == len(SWEEP) * sum(len(m) for m in MODES.values())


@PROFILE
@given(
    height=SIDE,
    width=SIDE,
    stride=st.sampled_from([1, 8, 16, 32, 64]),
    long_side=st.one_of(st.none(), st.integers(16, 512)),
    scale=st.sampled_from([1.0, 0.5, 1.5, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_preprocess_pads_to_stride_and_records_geometry(
    height, width, stride, long_side, scale, seed
) -> None:
    gray = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    scale = 1.0 if long_side is not None else scale  # one or the other
    prep = PreprocessSettings(long_side=long_side, stride=stride, scale=scale)
    batch, geometry = preprocess(gray, prep)
    assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[:2] == (1, 1)
    assert batch.flags["C_CONTIGUOUS"] and np.isfinite(batch).all()
    padded = batch.shape[2:]
    assert geometry.original == (height, width) and geometry.padded == padded
    sh, sw = geometry.scaled
    assert all(p % stride == 0 and p >= s and p - s < stride for p, s in zip(padded, (sh, sw)))
    if long_side is None and scale != 1.0:
        assert (sh, sw) == (max(1, round(height * scale)), max(1, round(width * scale)))
    elif long_side is None:
        assert (sh, sw) == (height, width) and all(p >= s for p, s in zip(padded, (height, width)))
        np.testing.assert_allclose(batch[0, 0, :height, :width], (gray / 255.0 - 0.5) / 0.25, atol=1e-6)
    else:
        assert max(sh, sw) == long_side or min(sh, sw) == 1
    # the default padding is 0 of the normalised image; edge replication repeats the last row/column
    plane = batch[0, 0]
    assert not plane[sh:].any() and not plane[:, sw:].any()
    edge = preprocess(gray, replace(prep, pad="edge"))[0][0, 0]
    np.testing.assert_array_equal(edge[:sh, :sw], plane[:sh, :sw])
    np.testing.assert_array_equal(edge[sh:, :sw], np.broadcast_to(edge[sh - 1, :sw], (padded[0] - sh, sw)))
    np.testing.assert_array_equal(edge[:, sw:], np.repeat(edge[:, sw - 1 : sw], padded[1] - sw, axis=1))


LOGITS = st.sampled_from(["normal", "huge", "saturated", "blobs"])


def make_logits(shape: tuple[int, int], kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0, 3, shape).astype(np.float32)
    if kind == "huge":
        return (rng.normal(0, 1, shape) * 1e30).astype(np.float32)
    if kind == "saturated":
        out = rng.choice(np.array([-np.inf, np.inf, 80.0, -80.0], dtype=np.float32), shape)
        return out.astype(np.float32)
    out = np.full(shape, -5.0, np.float32)  # a few rectangles of defect, including on the borders
    for _ in range(int(rng.integers(1, 6))):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        out[y : y + rng.integers(1, 40), x : x + rng.integers(1, 40)] = rng.uniform(-1, 8)
    return out


def check_prediction(pred, shape: tuple[int, int], post: PostprocessSettings) -> None:
    """The answer's invariants under each decision rule: regions (``decision_threshold`` None), a
    calibrated threshold on the mask's windowed score, or on the tile head's 1 - P(free)."""
    h, w = shape
    assert pred.probability.shape == shape and pred.probability.dtype == np.float32
    assert ((pred.probability >= 0) & (pred.probability <= 1)).all()
    assert pred.mask.shape == shape and pred.mask.dtype == np.uint8
    assert set(np.unique(pred.mask).tolist()) <= {0, 255}
    on = pred.mask > 0
    assert (pred.probability[on] >= post.threshold).all(), "mask pixel below the threshold"
    assert sum(r.area for r in pred.regions) == int(on.sum()), "region areas do not add up to the mask"
    assert bool(pred.regions) == bool(on.any())
    if post.score_source == "head":
        assert pred.score == pytest.approx(1.0 - pred.class_scores[post.free_class], abs=1e-9)
    else:
        assert pred.score == pytest.approx(image_score(pred.probability, post.score_window), abs=1e-7)
    if post.decision_threshold is None:
        assert pred.defective == bool(pred.regions)
    else:
        assert pred.defective == (pred.score >= post.decision_threshold)
        passed = shows_regions(pred.probability, post, pred.score)
        if pred.defective:
            assert passed, "a rejected tile always shows its regions"
        if not passed:
            assert not on.any() and pred.regions == [], "a tile the mask gate stops must show no defects"
        else:  # the regions are exactly those of the mask alone
            expected_mask, _ = find_regions(pred.probability, post.threshold, post.min_region_area)
            assert np.array_equal(pred.mask, expected_mask)
    if pred.class_scores:
        assert sum(pred.class_scores.values()) == pytest.approx(1.0, abs=1e-6)
        defects = {k: v for k, v in pred.class_scores.items() if k != post.free_class}
        assert pred.defect_class == (max(defects, key=defects.get) if pred.defective else None)
        # regions shown carry the most probable defect class (suspects below the decision too)
        assert all(r.class_name == max(defects, key=defects.get) for r in pred.regions)
    else:
        assert pred.defect_class is None
    for r in pred.regions:
        x, y, bw, bh = r.bbox
        assert 0 <= x and 0 <= y and bw >= 1 and bh >= 1 and x + bw <= w and y + bh <= h, (r.bbox, shape)
        assert max(post.min_region_area, 1) <= r.area <= bw * bh
        assert int(on[y : y + bh, x : x + bw].sum()) >= r.area
        assert post.threshold <= r.score <= 1.0


@PROFILE
@given(
    height=SIDE,
    width=SIDE,
    stride=st.sampled_from([8, 32]),
    long_side=st.one_of(st.none(), st.integers(16, 400)),
    kind=LOGITS,
    threshold=st.floats(0.01, 0.99),
    min_area=st.integers(0, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_restore_and_postprocess_give_a_binary_mask_of_the_input_size(
    height, width, stride, long_side, kind, threshold, min_area, seed
) -> None:
    gray = np.zeros((height, width), np.uint8)
    _, geometry = preprocess(gray, PreprocessSettings(long_side=long_side, stride=stride))
    logits = make_logits(geometry.padded, kind, seed)
    prob = restore_probability(logits, geometry)
    post = PostprocessSettings(threshold=threshold, min_region_area=min_area)
    check_prediction(postprocess(prob, post), (height, width), post)


TILE_CLASSES = ("MT_Blowhole", "MT_Crack", "MT_Free", "MT_Uneven")


class FakeRunner:
    """Stands in for the network: checks the batch it is given, returns seeded logits of its shape
    (and seeded tile-class logits when ``head``)."""

    def __init__(self, stride: int, kind: str, seed: int, head: bool = False) -> None:
        self.stride, self.kind, self.seed, self.head, self.calls = stride, kind, seed, head, 0

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self.calls += 1
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[:2] == (1, 1)
        assert batch.shape[2] % self.stride == 0 and batch.shape[3] % self.stride == 0
        tile = np.random.default_rng(self.seed).normal(0, 3, (1, len(TILE_CLASSES))) if self.head else None
        return make_logits(batch.shape[2:], self.kind, self.seed)[None, None], tile


# the decision rules a model can ship with: regions (old models), the mask's calibrated window
# score, the tile head's calibrated score
DECISIONS = st.sampled_from([None, "mask", "head"])


@PROFILE
@given(
    case=encoded_images(),
    long_side=st.one_of(st.none(), st.integers(32, 256)),
    kind=LOGITS,
    threshold=st.floats(0.05, 0.95),
    min_area=st.integers(0, 30),
    seed=st.integers(0, 2**32 - 1),
    decision=DECISIONS,
    window=st.sampled_from([1, 5, 15]),
    decision_threshold=st.floats(0.0, 1.0),
    gate=st.one_of(st.none(), st.floats(0.0, 1.0)),
    gate_window=st.sampled_from([None, 5]),
    head=st.booleans(),
)
def test_bytes_to_answer_through_a_fake_runner(
    case,
    long_side,
    kind,
    threshold,
    min_area,
    seed,
    decision,
    window,
    decision_threshold,
    gate,
    gate_window,
    head,
) -> None:
    data, expected, *_ = case
    head = head or decision == "head"
    post = PostprocessSettings(
        threshold=threshold,
        min_region_area=min_area,
        score_window=window,
        score_source="head" if decision == "head" else "mask",
        decision_threshold=None if decision is None else decision_threshold,
        mask_gate_threshold=gate,
        mask_gate_window=gate_window,
    )
    prep = PreprocessSettings(long_side=long_side, stride=32)
    model = ModelSettings(net={}, preprocess=prep, postprocess=post, class_names=TILE_CLASSES if head else ())
    runner = FakeRunner(32, kind, seed, head)
    prediction, ms = Predictor(model, runner, "fake").predict(decode_image(data))
    assert runner.calls == 1 and ms >= 0
    check_prediction(prediction, expected, post)


@PROFILE
@given(
    height=SIDE,
    width=SIDE,
    long_side=st.one_of(st.none(), st.integers(16, 400)),
    seed=st.integers(0, 2**32 - 1),
    nan_pixels=st.integers(1, 20),
)
def test_nan_logits_never_become_a_silent_answer(height, width, long_side, seed, nan_pixels) -> None:
    """A diverged network (NaN logits inside the image) must not yield a normal-looking answer: the
    probability keeps the NaN and the service's output guard refuses it."""
    from mtdefect.serving.runtime import ModelUnavailable
    from mtdefect.serving.runtime import check_prediction as service_guard

    rng = np.random.default_rng(seed)
    _, geometry = preprocess(np.zeros((height, width), np.uint8), PreprocessSettings(long_side=long_side))
    logits = rng.normal(0, 3, geometry.padded).astype(np.float32)
    sh, sw = geometry.scaled
    logits[rng.integers(0, sh, nan_pixels), rng.integers(0, sw, nan_pixels)] = np.nan
    prediction = postprocess(restore_probability(logits, geometry), PostprocessSettings())
    assert np.isnan(prediction.probability).any(), "NaN logits vanished from the probability map"
    with pytest.raises(ModelUnavailable, match="NaN"):
        service_guard(prediction, (height, width))
