"""The one inference path: preprocess geometry, postprocess decisions, decode limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mtdefect.inference import (
    DecodeError,
    DecodeLimits,
    PostprocessSettings,
    PreprocessSettings,
    decode_image,
    postprocess,
)
from mtdefect.inference.postprocess import restore_probability
from mtdefect.inference.preprocess import preprocess


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("shape", [(222, 103), (401, 631), (32, 32), (33, 65)])
def test_preprocess_pads_to_stride_and_restores_size(shape: tuple[int, int]) -> None:
    gray = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    batch, geometry = preprocess(gray, PreprocessSettings(stride=32))
    assert batch.shape[:2] == (1, 1) and batch.dtype == np.float32
    assert all(d % 32 == 0 and d >= s for d, s in zip(batch.shape[2:], shape))
    np.testing.assert_allclose(batch[0, 0, : shape[0], : shape[1]], (gray / 255 - 0.5) / 0.25, atol=1e-6)
    prob = restore_probability(np.zeros(batch.shape[2:], np.float32), geometry)
    assert prob.shape == shape and np.allclose(prob, 0.5)


def test_long_side_scaling_round_trips_to_input_size() -> None:
    gray = np.zeros((300, 600), np.uint8)
    batch, geometry = preprocess(gray, PreprocessSettings(long_side=256, stride=32))
    assert geometry.scaled == (128, 256) and batch.shape[2:] == (128, 256)
    assert restore_probability(np.zeros((128, 256), np.float32), geometry).shape == (300, 600)


def test_scale_factor_upsamples_and_round_trips_to_input_size() -> None:
    gray = np.zeros((101, 250), np.uint8)
    gray[40:60, 100:110] = 255
    batch, geometry = preprocess(gray, PreprocessSettings(scale=1.5, stride=32))
    assert geometry.scaled == (152, 375) and batch.shape[2:] == (160, 384)
    # the bright patch lands 1.5x further in and 1.5x larger (bilinear edges: within a pixel)
    plane = batch[0, 0, :152, :375]
    bright = np.argwhere(plane > plane.mean())
    np.testing.assert_allclose(bright.min(0), [60, 150], atol=1)
    np.testing.assert_allclose(bright.max(0), [89, 164], atol=1)
    prob = restore_probability(np.zeros((160, 384), np.float32), geometry)
    assert prob.shape == (101, 250)


def test_scale_and_long_side_are_exclusive_and_scale_positive() -> None:
    with pytest.raises(ValueError, match="not both"):
        PreprocessSettings(long_side=256, scale=2.0)
    with pytest.raises(ValueError, match="positive"):
        PreprocessSettings(scale=0.0)


def test_postprocess_regions_threshold_and_min_area() -> None:
    prob = np.zeros((20, 30), np.float32)
    prob[2:6, 3:8] = 0.9  # 20 px region
    prob[10, 20] = 0.7  # 1 px speck
    result = postprocess(prob, PostprocessSettings(threshold=0.5, min_region_area=5))
    assert result.defective and len(result.regions) == 1
    region = result.regions[0]
    assert region.bbox == (3, 2, 5, 4) and region.area == 20 and region.score == pytest.approx(0.9)
    assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) == {0, 255}
    assert result.mask[10, 20] == 0 and result.score == pytest.approx(0.9)
    assert result.defect_area_fraction == pytest.approx(20 / 600)
    clean = postprocess(prob, PostprocessSettings(threshold=0.95))
    assert not clean.defective and clean.regions == [] and not clean.mask.any()


def test_decode_modes_to_gray() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    assert decode_image(encode(rgb)).shape == (20, 30)
    sixteen = Image.fromarray(np.full((20, 30), 65535, np.uint16))
    out = io.BytesIO()
    sixteen.save(out, format="PNG")
    assert decode_image(out.getvalue()).max() == 255


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty upload"),
        (b"hello, this is text", "not a supported image"),
        (encode(np.zeros((4, 4), np.uint8)), "at least 8 px"),
    ],
)
def test_decode_rejects(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_image(data)


def test_decode_limits_checked_before_pixels() -> None:
    big = encode(np.zeros((300, 300), np.uint8))
    with pytest.raises(DecodeError, match="over the limit") as info:
        decode_image(big, DecodeLimits(max_pixels=200 * 200))
    assert info.value.status == 413
    with pytest.raises(DecodeError, match="byte limit"):
        decode_image(big, DecodeLimits(max_bytes=100))


def test_truncated_jpeg_is_a_clear_error() -> None:
    data = encode(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8), "JPEG")
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_stride_padding_is_zero_for_new_models_and_edge_for_old_settings(tmp_path) -> None:
    """``zero`` pads with 0 after normalisation (what the convolutions show at training crops'
    borders); settings saved before ``pad`` existed load as ``edge``, as those models were calibrated."""
    import json

    import numpy as np

    from mtdefect.inference import ModelSettings, PreprocessSettings
    from mtdefect.inference.preprocess import preprocess

    gray = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
    batch, geometry = preprocess(gray, PreprocessSettings(per_image=True))
    assert geometry.padded == (32, 64) and np.all(batch[0, 0, 30:] == 0) and np.all(batch[0, 0, :, 40:] == 0)
    edge, _ = preprocess(gray, PreprocessSettings(per_image=True, pad="edge"))
    assert np.array_equal(edge[0, 0, 31], edge[0, 0, 29]) and np.array_equal(
        edge[0, 0, :30, :40], batch[0, 0, :30, :40]
    )
    with pytest.raises(ValueError, match="pad must be one of"):
        PreprocessSettings(pad="reflect")
    saved = ModelSettings(net={"encoder": "x"}, preprocess=PreprocessSettings())
    data = saved.to_dict()
    assert data["preprocess"]["pad"] == "zero" and ModelSettings.from_dict(data).preprocess.pad == "zero"
    del data["preprocess"]["pad"]  # a model saved before the field existed
    (tmp_path / "settings.json").write_text(json.dumps(data))
    assert ModelSettings.load(tmp_path).preprocess.pad == "edge"
