"""Sliding-window inference (Predictor.window): stitched results equal whole-image inference where
the network's answer does not depend on context, a tile that fits one window is run whole, and the
per-backend postprocess calibration of the model settings."""

from __future__ import annotations

import numpy as np
import pytest

from mtdefect.inference.postprocess import softmax_scores
from mtdefect.inference.predictor import Predictor, _spans
from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings

CLASSES = ("MT_Blowhole", "MT_Free")


def pointwise_runner(calls: list[tuple[int, ...]]):
    """A network whose pixel logits depend on each pixel alone (so windows cannot change them) and
    whose tile head says "defect" by the brightest pixel it saw (the whole image's brightest pixel
    lies in exactly one window: the stitched answer must be that window's)."""

    def run(batch: np.ndarray):
        calls.append(batch.shape)
        logits = (batch * 3.0 - 1.0).astype(np.float32)
        peak = batch.reshape(batch.shape[0], -1).max(axis=1)
        return logits, np.stack([peak, -peak], axis=1).astype(np.float32)

    return run


def settings(**post) -> ModelSettings:
    return ModelSettings(
        net={},
        preprocess=PreprocessSettings(per_image=True),
        postprocess=PostprocessSettings(threshold=0.7, decision_threshold=0.5, score_source="head", **post),
        class_names=CLASSES,
    )


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = rng.integers(60, 160, (height, width)).astype(np.uint8)
    gray[height * 2 // 3, width // 5] = 255  # one bright pixel, away from the first window
    return gray


@pytest.mark.parametrize("shape", [(700, 530), (97, 1000), (1000, 65)])
def test_windows_stitch_exactly_like_the_whole_image(shape: tuple[int, int]) -> None:
    gray = image(*shape)
    whole_calls: list = []
    windowed_calls: list = []
    whole = Predictor(settings(), pointwise_runner(whole_calls), "fake", window=None)
    windowed = Predictor(settings(), pointwise_runner(windowed_calls), "fake", window=128, overlap=32)
    a, _ = whole.predict(gray)
    b, _ = windowed.predict(gray)
    assert len(whole_calls) == 1 and len(windowed_calls) > 3
    assert all(s[2] <= 128 and s[3] <= 128 for s in windowed_calls)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.class_scores == b.class_scores and a.defective == b.defective


def test_a_tile_that_fits_is_run_whole_and_unchanged() -> None:
    gray = image(324, 270)
    calls: list = []
    windowed = Predictor(settings(), pointwise_runner(calls), "fake", window=352, overlap=64)
    whole = Predictor(settings(), pointwise_runner([]), "fake", window=None)
    a, b = windowed.predict(gray)[0], whole.predict(gray)[0]
    assert calls == [(1, 1, 352, 288)]
    np.testing.assert_array_equal(a.probability, b.probability)
    assert a.class_scores == b.class_scores


def test_spans_cover_the_axis_once_with_seams_inside_overlaps() -> None:
    for size in (32, 128, 129 * 32 // 32, 4096, 4128, 1000):
        size -= size % 32
        for window, overlap in ((128, 32), (1088, 64), (64, 0)):
            spans = _spans(size, window, overlap)
            kept = [keep for _, _, keep in spans]
            assert kept[0][0] == 0 and kept[-1][1] == size
            assert all(k1[1] == k2[0] for k1, k2 in zip(kept, kept[1:]))
            for start, stop, (lo, hi) in spans:
                assert start % 32 == 0 and start <= lo < hi <= stop <= size
    assert len(_spans(4096, 1088, 64)) == 4  # the default: a 4096-pixel side is 4 windows


def test_the_most_defective_window_is_found_where_every_window_rounds_to_clean() -> None:
    """Every window's head is so sure of "clean" that P(free) is exactly 1.0 in float64: the tile's
    answer must still be the window that saw the defect (its defect probability, summed, is largest),
    not the first of a tie."""

    def confident_clean(batch: np.ndarray):
        logits, tiles = pointwise_runner([])(batch)
        return logits, np.stack([tiles[:, 0] - 60.0, np.zeros(len(tiles), np.float32)], axis=1)

    gray = image(700, 530)
    whole, _ = Predictor(settings(), confident_clean, "fake", window=None).predict(gray)
    windowed, _ = Predictor(settings(), confident_clean, "fake", window=128, overlap=32).predict(gray)
    assert windowed.class_scores["MT_Free"] == 1.0  # 1 − P(free) is 0 in every window
    assert windowed.class_scores == whole.class_scores
    assert windowed.score == whole.score > 0.0


def test_the_check_stops_between_windows() -> None:
    calls: list = []
    predictor = Predictor(settings(), pointwise_runner(calls), "fake", window=128, overlap=32)

    def check() -> None:
        if len(calls) >= 2:
            raise TimeoutError("stop")

    with pytest.raises(TimeoutError):
        predictor.predict(image(600, 600), check)
    assert len(calls) == 2


def test_window_must_sit_on_the_stride_grid() -> None:
    with pytest.raises(ValueError, match="multiples of the stride"):
        Predictor(settings(), pointwise_runner([]), "fake", window=100)


def test_each_backend_can_carry_its_own_calibration(tmp_path) -> None:
    base = settings()
    tuned = ModelSettings.from_dict(
        {**base.to_dict(), "backend_postprocess": {"onnx-int8": {"decision_threshold": 0.8}}}
    )
    tuned.save(tmp_path)
    loaded = ModelSettings.load(tmp_path)
    assert loaded.for_backend("onnx-int8").postprocess.decision_threshold == 0.8
    assert loaded.for_backend("onnx").postprocess.decision_threshold == 0.5
    assert loaded.for_backend("onnx-int8").postprocess.threshold == 0.7
    with pytest.raises(ValueError):
        ModelSettings.from_dict({**base.to_dict(), "backend_postprocess": {"onnx-int8": {"nope": 1}}})
    # a tile head's scores: the softmax the predictor reports
    assert softmax_scores(np.array([0.0, 0.0]), CLASSES) == {"MT_Blowhole": 0.5, "MT_Free": 0.5}
