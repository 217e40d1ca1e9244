"""One decision per physical tile from its photographs: the fusions, the decision rule, the tile
threshold chosen on validation tiles for the false-alarm budget, and the multi-image form parsing."""

from __future__ import annotations

import numpy as np
import pytest

from mtdefect.calibrate import choose_views_threshold
from mtdefect.data.split import Record, tile_names
from mtdefect.inference.multiview import MAX_VIEWS, decide_tile, fuse_view_scores
from mtdefect.inference.postprocess import Prediction
from mtdefect.inference.settings import PostprocessSettings
from mtdefect.scoring import ScoredImage
from mtdefect.serving.errors import ApiError
from mtdefect.serving.upload import images_from_form


def view(score: float, defective: bool, defect_class: str | None = None) -> Prediction:
    mask = np.zeros((4, 5), np.uint8)
    return Prediction(np.zeros((4, 5), np.float32), mask, score, defective, defect_class=defect_class)


def test_fusions_of_view_scores() -> None:
    scores = [0.1, 0.9, 0.2, 0.3]
    assert fuse_view_scores(scores, "median") == pytest.approx(0.25)
    assert fuse_view_scores(scores, "mean") == pytest.approx(0.375)
    assert fuse_view_scores(scores, "max") == pytest.approx(0.9)
    assert fuse_view_scores([0.7], "median") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least one view"):
        fuse_view_scores([], "median")
    with pytest.raises(ValueError, match="view fusion"):
        fuse_view_scores([0.1], "min")
    with pytest.raises(ValueError, match="view_fusion"):
        PostprocessSettings(view_fusion="min")


def test_one_bad_view_of_a_clean_tile_does_not_reject_it_under_the_median() -> None:
    views = [view(0.05, False), view(0.97, True, "MT_Crack"), view(0.1, False)]
    median = decide_tile(views, PostprocessSettings(decision_threshold=0.9))
    assert not median.defective and median.score == pytest.approx(0.1) and median.defect_class is None
    maximum = decide_tile(views, PostprocessSettings(decision_threshold=0.9, view_fusion="max"))
    assert maximum.defective and maximum.defect_class == "MT_Crack"


def test_the_tile_threshold_wins_over_the_image_threshold_and_carries_the_best_views_class() -> None:
    views = [view(0.6, True, "MT_Fray"), view(0.8, True, "MT_Crack"), view(0.3, False)]
    settings = PostprocessSettings(decision_threshold=0.95, views_decision_threshold=0.55)
    tile = decide_tile(views, settings)
    assert tile.threshold == 0.55 and tile.defective and tile.score == pytest.approx(0.6)
    assert tile.defect_class == "MT_Crack" and len(tile.views) == 3
    assert not decide_tile(views, PostprocessSettings(decision_threshold=0.95)).defective


def test_without_any_threshold_the_views_majority_decides() -> None:
    settings = PostprocessSettings()  # decided by regions, no score threshold
    assert decide_tile([view(0.9, True), view(0.1, False)], settings).defective  # half
    assert not decide_tile([view(0.9, True), view(0.1, False), view(0.2, False)], settings).defective
    with pytest.raises(ValueError, match="at least one view"):
        decide_tile([], settings)


def scored(cls: str, stem: str, free_probability: float) -> ScoredImage:
    record = Record(f"{cls}/{stem}.jpg", f"{cls}/{stem}.png", cls, "val", "")
    shape = (4, 4)
    scores = {"MT_Crack": 1.0 - free_probability, "MT_Free": free_probability}
    return ScoredImage(
        record, np.zeros(shape, np.uint8), np.zeros(shape, bool), np.zeros(shape, np.float32), scores
    )


def test_tile_names_split_a_group_where_the_lighting_starts_again() -> None:
    samples = [
        ("MT_Free", "Imgs/exp1_num_100.jpg"),
        ("MT_Free", "Imgs/exp2_num_130.jpg"),
        ("MT_Free", "Imgs/exp1_num_160.jpg"),  # lighting 1 again: the next tile of the group
        ("MT_Crack", "Imgs/exp1_num_100.jpg"),
    ]
    names = tile_names(samples, 300)
    assert names[0] == names[1] != names[2] and names[3].startswith("MT_Crack/")
    assert tile_names(samples, None)[0] != tile_names(samples, None)[1]  # no grouping: each alone


def test_views_threshold_is_chosen_on_whole_tiles_for_the_budget() -> None:
    """Twenty clean tiles of three views (one with a single bad view each) and five defective tiles:
    the median keeps every clean tile under the threshold and rejects the defective ones."""
    items = []
    for tile in range(20):
        bad = 0.95 if tile % 4 == 0 else 0.2  # one loud view on every fourth clean tile
        for light, p_defect in enumerate([0.05 + 0.01 * tile, bad, 0.1]):
            items.append(scored("MT_Free", f"exp{light + 1}_num_{1000 * tile + 30 * light}", 1.0 - p_defect))
    for tile in range(5):
        for light, p_defect in enumerate([0.9, 0.8, 0.3]):
            items.append(scored("MT_Crack", f"exp{light + 1}_num_{1000 * tile + 30 * light}", 1.0 - p_defect))
    settings = PostprocessSettings(score_source="head", decision_threshold=0.5)
    threshold, report = choose_views_threshold(items, settings, 0.01, 300)
    assert report["tiles"] == 25 and report["defective_tiles"] == 5 and report["views_per_tile"] == 3
    assert report["recall"] == 1.0 and report["false_alarm_rate"] == 0.0 and report["auroc"] == 1.0
    assert 0.21 <= threshold < 0.211  # just above the highest clean median (tile 16: 0.21)
    _, loud = choose_views_threshold(
        items, PostprocessSettings(score_source="head", view_fusion="max"), 0.01, 300
    )
    assert loud["views_decision_threshold"] > 0.9 and loud["recall"] == 0.0  # max: loud clean views win


def body(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    boundary = "b0undary"
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_several_image_parts_are_read_in_order_with_their_file_names() -> None:
    data, content_type = body(
        ("image", "exp1.png", b"one"), ("image", None, b"two"), ("image", "c.png", b"3")
    )
    images = images_from_form(data, content_type, MAX_VIEWS)
    assert [i.data for i in images] == [b"one", b"two", b"3"]
    assert [i.filename for i in images] == ["exp1.png", None, "c.png"]


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("image", "a.png", b"x")] * 7, "1 to 6 photographs"),
        ([("image", "a.png", b"x"), ("note", None, b"hi")], "unexpected form field"),
        ([("picture", "a.png", b"x")], "missing form field 'image'"),
    ],
)
def test_a_bad_multi_image_form_is_refused_with_a_400(parts, message) -> None:
    data, content_type = body(*parts)
    with pytest.raises(ApiError, match=message) as caught:
        images_from_form(data, content_type, MAX_VIEWS)
    assert caught.value.status == 400
