"""The tile-head screen on synthetic pooled features whose answer is known: a defect that only two of
a tile's six lightings show is voted down by the median of the views and found by a head fitted on
the tile's mean features."""

from __future__ import annotations

import numpy as np
import pytest

from mtdefect.metrics import binary_auroc, recall_at_false_alarm_rate
from mtdefect.screen.head_refit import VIEWS
from mtdefect.screen.tile_head import VARIANTS, fold_tile_scores, main, mean_over_views, paired_tile_gain

FREE = 0
RULE = {
    "l2": [1e-3, 1e-1],
    "flips": ["horizontal"],
    "hard_negative_fraction": 0.1,
    "hard_negative_weight": 1.0,
    "objective": "multinomial",
}


def split(rng: np.random.Generator, tiles: int, prefix: str, dim: int = 6):
    """``tiles`` tiles of six views each, every third defective: dimension 0 is +5 on two of a
    defective tile's six views and noise elsewhere; a tile's views share a tile offset."""
    rows, labels, names = [], [], []
    for t in range(tiles):
        defective = t % 3 == 0
        offset = rng.normal(scale=0.3, size=dim)
        for view in range(6):
            x = offset + rng.normal(size=dim)
            if defective and view < 2:
                x[0] += 5.0
            rows.append(x)
            labels.append(1 if defective else FREE)
            names.append(f"{prefix}/{t}")
    return np.array(rows, np.float32), np.array(labels), names


def synthetic_fold(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    train, train_labels, train_tiles = split(rng, 120, "train")
    val, val_labels, val_tiles = split(rng, 60, "val")
    test, test_labels, test_tiles = split(rng, 150, "test")
    flipped = np.stack([train + rng.normal(scale=0.05, size=train.shape).astype(np.float32) for _ in VIEWS])
    features = {
        "train": flipped,
        "train_labels": train_labels,
        "val": val,
        "val_labels": val_labels,
        "test": test,
        "test_labels": test_labels,
        "class_names": np.array(["MT_Free", "MT_Crack"]),
    }
    return features, {"train": train_tiles, "val": val_tiles, "test": test_tiles}


def test_mean_over_views_keeps_the_order_of_first_appearance() -> None:
    x = np.array([[1.0], [5.0], [3.0], [7.0]])
    pooled, rows = mean_over_views(x, ["b", "a", "b", "a"])
    assert pooled[:, 0].tolist() == [2.0, 6.0]
    assert [r.tolist() for r in rows] == [[0, 2], [1, 3]]


def test_a_defect_two_lightings_show_is_found_by_the_tile_head_not_the_median() -> None:
    features, tiles = synthetic_fold()
    scores = fold_tile_scores(features, tiles, RULE, FREE)
    assert set(scores) == set(VARIANTS)
    _, rows = mean_over_views(features["test"], tiles["test"])
    truth = np.array([features["test_labels"][r[0]] != FREE for r in rows])
    assert all(len(s) == len(truth) == 150 for s in scores.values())
    auroc = {name: binary_auroc(s, truth) for name, s in scores.items()}
    recall = {name: recall_at_false_alarm_rate(s, truth, 0.01)["recall"] for name, s in scores.items()}
    # the median of six views sees four clean-looking ones; the mean keeps a third of the signal
    assert auroc["tile_head"] > 0.97 and auroc["median_of_views"] < 0.9
    assert recall["tile_head"] > recall["median_of_views"] + 0.3
    # on the decision's scale: the clean held-out tiles centre near 0 against the clean val tiles
    clean = scores["tile_head"][~truth]
    assert abs(float(np.median(clean))) < 1.0


def test_the_paired_gain_is_zero_against_itself_and_its_interval_holds_the_gain() -> None:
    rng = np.random.default_rng(3)
    truth = np.arange(200) % 4 == 0
    groups = np.array([f"g{i // 2}" for i in range(200)])
    base = rng.normal(size=200) + truth * 1.0
    better = base + truth * 3.0
    same = paired_tile_gain(base, base, truth, groups, 200, 0)
    assert same["tile_recall_at_1pct_fa"]["value"] == 0.0 and same["tile_auroc"]["value"] == 0.0
    gain = paired_tile_gain(base, better, truth, groups, 200, 0)["tile_recall_at_1pct_fa"]
    assert gain["value"] > 0.3 and gain["ci_low"] > 0 and gain["ci_low"] <= gain["value"] <= gain["ci_high"]
    assert gain["after"] - gain["before"] == pytest.approx(gain["value"])


def test_cli_fails_in_one_line_without_fold_models(tmp_path, capsys) -> None:
    out = tmp_path / "screen.json"
    with pytest.raises(SystemExit) as exit_info:
        main([str(out), str(tmp_path / "no_models"), "--cache", str(tmp_path / "cache")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "holds no fold_<k>/ model folders" in err and "Traceback" not in err
    assert not out.exists()
