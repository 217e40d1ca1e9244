"""The clean-tile anomaly branch under CV (mtdefect.cv.anomaly) and its leave-one-class-out scoring
(mtdefect.cv.decision.left_out_compare), on small synthetic images and rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdefect.cv.anomaly import (
    fit_gaussian,
    global_features,
    knn_distance,
    mahalanobis,
    main,
    nearest_distance,
    output_dir,
    patch_features,
    whitener,
)
from mtdefect.cv.decision import left_out_compare
from mtdefect.inference import PreprocessSettings

SETTINGS = PreprocessSettings(per_image=False, pad="zero")


class PoolingEncoder(torch.nn.Module):
    """Stands in for a timm encoder: maps at strides 1, 8 and 16 (each pixel's local mean and
    brightness), so a patch's feature says what its pixels look like."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        def at(stride: int) -> torch.Tensor:
            mean = F.avg_pool2d(x, stride)
            square = F.avg_pool2d(x * x, stride)
            return torch.cat([mean, square], 1)

        return [x, at(8), at(16)]


def texture(rng: np.random.Generator, height: int = 96, width: int = 128) -> np.ndarray:
    return (120 + rng.integers(-8, 9, size=(height, width))).astype(np.uint8)


def test_border_leaves_the_outer_patches_out() -> None:
    gray = texture(np.random.default_rng(0))  # 96 × 128: a 12 × 16 grid of stride-8 patches
    encoder = PoolingEncoder()
    assert patch_features(encoder, gray, SETTINGS).shape == (12 * 16, 4)
    assert patch_features(encoder, gray, SETTINGS, border=2).shape == (8 * 12, 4)
    assert patch_features(encoder, gray, SETTINGS, border=50).shape[0] >= 1  # never empty


def test_a_dark_rim_outranks_a_defect_only_with_the_border_kept() -> None:
    """A clean tile whose rim is darker than every banked tile's is the branch's false alarm: with the
    border kept it scores above a tile with a real spot; with two edge patches left out it falls
    below it (the rim still reaches in through the pooling and the stride-16 map), and the spot's
    score does not change."""
    rng = np.random.default_rng(1)
    encoder = PoolingEncoder()

    def score(gray: np.ndarray, border: int) -> float:
        bank = torch.cat([patch_features(encoder, g, SETTINGS, border) for g in clean])
        return float(nearest_distance(patch_features(encoder, gray, SETTINGS, border), bank).max())

    clean = [texture(rng) for _ in range(5)]
    rimmed = texture(rng)
    rimmed[:8], rimmed[-8:], rimmed[:, :8], rimmed[:, -8:] = 30, 30, 30, 30
    spotted = texture(rng)
    spotted[40:56, 56:72] = 250
    assert score(rimmed, 0) > score(spotted, 0)
    assert score(rimmed, 2) < 0.5 * score(spotted, 2)
    assert score(spotted, 2) == pytest.approx(score(spotted, 0), rel=0.01)
    assert score(rimmed, 0) > score(rimmed, 1) > score(rimmed, 2) > score(rimmed, 3)


def test_global_features_summarise_the_valid_area_of_each_coarse_map() -> None:
    """Mean, spread and maximum per channel of every map of stride ≥ 4 (here 8 and 16, two channels
    each): 12 numbers whatever the tile's size; the stride-1 map is left out, and the padding that
    brings an 80-row tile to the network's stride (96 rows) never enters the summary."""
    rng = np.random.default_rng(3)
    encoder = PoolingEncoder()
    gray = texture(rng, 80, 128)
    features = global_features(encoder, gray, SETTINGS)
    assert features.shape == (12,)
    assert global_features(encoder, texture(rng, 160, 64), SETTINGS).shape == (12,)
    normalised = (gray / 255.0 - SETTINGS.mean) / SETTINGS.std
    assert float(features[0]) == pytest.approx(normalised.mean(), rel=1e-4)  # stride 8, channel 0: mean
    assert float(features[4]) == pytest.approx(normalised.reshape(10, 8, 16, 8).mean((1, 3)).max(), rel=1e-4)


def test_the_gaussian_scores_a_spotted_tile_above_every_clean_one() -> None:
    """Fitted on clean tiles only, the Mahalanobis distance of a tile with a bright spot exceeds
    that of every unseen clean tile; a perfectly typical tile (the mean) scores zero."""
    rng = np.random.default_rng(4)
    encoder = PoolingEncoder()
    clean = np.stack([global_features(encoder, texture(rng), SETTINGS).numpy() for _ in range(40)])
    mean, precision = fit_gaussian(clean)
    assert mahalanobis(mean, mean, precision) == pytest.approx(0.0, abs=1e-9)
    spotted = texture(rng)
    spotted[40:56, 56:72] = 250
    spot_score = mahalanobis(global_features(encoder, spotted, SETTINGS).numpy(), mean, precision)
    unseen = [
        mahalanobis(global_features(encoder, texture(rng), SETTINGS).numpy(), mean, precision)
        for _ in range(20)
    ]
    assert spot_score > 3 * max(unseen)


def test_whitened_distances_are_the_gaussians_mahalanobis_distances() -> None:
    rng = np.random.default_rng(5)
    samples = rng.normal(size=(60, 4)) @ rng.normal(size=(4, 4))
    mean, precision = fit_gaussian(samples)
    whiten = whitener(mean, precision)
    for row in rng.normal(size=(5, 4)):
        assert float(np.linalg.norm(whiten(row)[0])) == pytest.approx(
            mahalanobis(row, mean, precision), rel=1e-9
        )


def test_nearest_clean_tiles_flag_a_tile_between_two_lightings_that_the_gaussian_calls_typical() -> None:
    """Clean tiles under two lightings form two clusters; a tile halfway between them looks like no
    clean tile. The one Gaussian puts it at the centre (its lowest score); the mean distance to its
    5 nearest clean tiles puts it above every clean tile of either lighting."""
    rng = np.random.default_rng(6)
    dark, bright = rng.normal(0.0, 1.0, size=(40, 3)), rng.normal(0.0, 1.0, size=(40, 3))
    dark -= 10  # the lighting moves every feature
    bright += 10
    clean = np.concatenate([dark, bright])
    mean, precision = fit_gaussian(clean)
    whiten = whitener(mean, precision)
    bank = whiten(clean)
    between = np.zeros(3)
    unseen = np.concatenate([rng.normal(0.0, 1.0, size=(10, 3)) + s for s in (-10, 10)])

    def knn(row: np.ndarray) -> float:
        return knn_distance(whiten(row)[0], bank, 5)

    assert mahalanobis(between, mean, precision) < min(mahalanobis(r, mean, precision) for r in unseen)
    assert knn(between) > max(knn(r) for r in unseen)
    assert knn_distance(np.zeros(2), np.array([[3.0, 4.0], [6.0, 8.0]]), 1) == pytest.approx(5.0)
    assert knn_distance(np.zeros(2), np.array([[3.0, 4.0], [6.0, 8.0]]), 9) == pytest.approx(7.5)  # all


def test_each_variant_writes_its_own_folder(tmp_path) -> None:
    assert output_dir(tmp_path, "imagenet") == tmp_path / "anomaly"
    assert output_dir(tmp_path, "imagenet", pooling="global") == tmp_path / "anomaly_global"
    assert output_dir(tmp_path, "fold", pooling="global") == tmp_path / "anomaly_global_fold_encoder"
    assert output_dir(tmp_path, "fold", pooling="global", neighbours=5) == (
        tmp_path / "anomaly_global_knn5_fold_encoder"
    )
    assert output_dir(tmp_path, "fold", 2) == tmp_path / "anomaly_fold_encoder_border2"
    assert output_dir(tmp_path, "imagenet", 2, unseen=True) == tmp_path / "anomaly_border2_unseen"


@pytest.mark.parametrize(
    "argv",
    [
        ["--border", "-1"],
        ["0"],
        ["0.05", "0", "hub"],
        ["--global", "--border", "2"],
        ["--knn", "5"],
        ["--global", "--knn", "-1"],
    ],
)
def test_bad_arguments_get_a_usage_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m mtdefect.cv.anomaly" in capsys.readouterr().err


def test_left_out_classes_are_scored_each_by_its_own_job() -> None:
    """Two jobs, each leaving one class out: each class is judged only against its job's clean tiles,
    each scorer normalised by that job's clean validation scores — the same raw score means different
    things in the two jobs."""
    rng = np.random.default_rng(2)
    rows, reference = [], {}
    for job, left_out, head_defect in (
        ("unseen_MT_Crack", "MT_Crack", 0.9),
        ("unseen_MT_Fray", "MT_Fray", 0.3),
    ):
        clean_head = 0.05 if left_out == "MT_Crack" else 0.2  # the second job's model scores higher overall
        for i in range(100):
            rows.append(
                {
                    "image": f"MT_Free/{job}_{i}.jpg",
                    "class": "MT_Free",
                    "group": f"MT_Free/{job}.{i}",
                    "fold": job,
                    "head": float(rng.uniform(clean_head * 0.5, clean_head)),
                    "anomaly": float(rng.uniform(1, 2)),
                }
            )
        for i in range(10):  # the head catches the even ones, the anomaly branch the odd ones
            rows.append(
                {
                    "image": f"{left_out}/{job}_{i}.jpg",
                    "class": left_out,
                    "group": f"{left_out}/{i}",
                    "fold": job,
                    "head": head_defect if i % 2 == 0 else clean_head * 0.7,
                    "anomaly": 5.0 if i % 2 else 1.5,
                }
            )
        reference[job] = {
            "head": rng.uniform(clean_head * 0.5, clean_head, 50),
            "anomaly": rng.uniform(1, 2, 50),
        }
    result = left_out_compare(rows, reference, "MT_Free", None, n_resamples=30)
    assert set(result) == {"MT_Crack", "MT_Fray"}
    for left_out in ("MT_Crack", "MT_Fray"):
        block = result[left_out]
        assert block["images"] == 10 and block["clean_images"] == 100
        assert block["head"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
        assert block["anomaly"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
        assert block["fused_max"]["recall_at_1pct_fa"]["value"] == pytest.approx(1.0)
        assert block["head"]["per_class_recall_at_1pct_fa"] == {left_out: pytest.approx(0.5)}
    assert "fused_fitted" not in result["MT_Crack"]  # nothing fitted on seen classes
