"""Fusions measured under CV without training (issue #21): the view fusions of a tile
(``cv.view_fusion``) and the head fused with the mask's own score (``cv.mask_fusion``), on synthetic
rows whose answer is known, and on fold models trained on a tiny synthetic archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtdefect.cv import mask_fusion, view_fusion
from mtdefect.inference.multiview import VIEW_FUSIONS

VIEWS = 5


def tile_rows(rng: np.random.Generator, clean_tiles: int = 60, defective_tiles: int = 30) -> list[dict]:
    """Clean tiles: five quiet views and one loud one (z ≈ 6); defective tiles: three views at z ≈ 3,
    two quiet. Views are named as the archive names them (capture numbers 30 apart)."""
    rows = []
    for cls, tiles in (("MT_Free", clean_tiles), ("MT_Crack", defective_tiles)):
        for tile in range(tiles):
            z = rng.normal(0.0, 0.3, VIEWS)
            if cls == "MT_Free":
                z[rng.integers(VIEWS)] += 6.0
            else:
                z[:3] += 3.0
            for light, value in enumerate(z):
                rows.append(
                    {
                        "image": f"{cls}/exp{light + 1}_num_{1000 * tile + 30 * light}.jpg",
                        "class": cls,
                        "group": f"{cls}/{tile}",
                        "fold": tile % 3,
                        "z": float(value),
                    }
                )
    return rows


def test_the_median_ignores_one_loud_view_that_the_max_rejects_for() -> None:
    summary = view_fusion.compare_fusions(tile_rows(np.random.default_rng(0)), "MT_Free", 300, 100)
    fusions = summary["fusions"]
    assert summary["tiles"] == 90 and summary["defective_tiles"] == 30
    assert summary["served"] == list(VIEW_FUSIONS)
    assert set(fusions) == set(VIEW_FUSIONS) | set(view_fusion.CANDIDATES) | {"fitted"}
    assert fusions["median"]["tile_recall_at_1pct_fa"]["value"] == 1.0
    assert fusions["max"]["tile_recall_at_1pct_fa"]["value"] == 0.0  # every clean tile has a louder view
    assert fusions["fitted"]["tile_auroc"]["value"] > 0.95  # the combiner finds the median's rule
    for entry in fusions.values():
        low, high = entry["tile_auroc"]["ci_low"], entry["tile_auroc"]["ci_high"]
        assert low <= entry["tile_auroc"]["value"] <= high


def write_fold(path: Path, fold: int, scores: list[float], reference: list[float] | None) -> None:
    rows = [
        {"image": f"MT_Free/exp1_num_{1000 * i}.jpg", "class": "MT_Free", "group": f"MT_Free/{i}", "score": s}
        for i, s in enumerate(scores)
    ]
    path.mkdir(parents=True, exist_ok=True)
    (path / f"fold_{fold}.json").write_text(json.dumps({"rows": rows, "reference_scores": reference}))


def logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_each_fold_is_normalised_by_its_own_clean_validation_scores(tmp_path: Path) -> None:
    """Fold 1's model scores everything 2 logits higher than fold 0's, its clean validation images
    too: on the pooled scale the two folds' rows are the same."""
    logits = np.array([-3.0, -1.0, 0.5, 2.0])
    reference = np.array([-4.0, -3.0, -2.5, -2.0, -1.0])
    write_fold(tmp_path, 0, logistic(logits).tolist(), logistic(reference).tolist())
    write_fold(tmp_path, 1, logistic(logits + 2).tolist(), logistic(reference + 2).tolist())
    rows = view_fusion.pooled_rows(tmp_path, 2)
    z = np.array([r["z"] for r in rows]).reshape(2, -1)
    np.testing.assert_allclose(z[0], z[1], atol=1e-6)
    assert [r["fold"] for r in rows] == [0] * 4 + [1] * 4
    write_fold(tmp_path, 1, [0.5], None)  # rows written before the reference was kept
    with pytest.raises(ValueError, match="no clean validation reference"):
        view_fusion.pooled_rows(tmp_path, 2)


def scorer_rows(rng: np.random.Generator, mask_sees_breaks: bool) -> list[dict]:
    """Held-out rows of three folds and each fold's clean validation rows. The head sees cracks and
    misses breaks; the mask sees breaks (or nothing)."""
    rows = []
    for fold in range(3):
        for split, cls, n in (("val", "MT_Free", 30), ("test", "MT_Free", 60), ("test", "MT_Crack", 20)):
            rows += [dict(split=split, cls=cls, fold=fold) for _ in range(n)]
        rows += [dict(split="test", cls="MT_Break", fold=fold) for _ in range(20)]
    out = []
    for i, r in enumerate(rows):
        head = rng.normal(-3, 0.5) + (5 if r["cls"] == "MT_Crack" else 0)
        mask = rng.normal(-2, 0.5) + (5 if r["cls"] == "MT_Break" and mask_sees_breaks else 0)
        out.append(
            {
                "image": f"{r['cls']}/exp1_num_{1000 * i}.jpg",
                "class": r["cls"],
                "split": r["split"],
                "group": f"{r['cls']}/{i}",
                "fold": r["fold"],
                "scores": {"head": float(logistic(head)), "mask1": float(logistic(mask))},
            }
        )
    return out


def test_the_mask_adds_what_the_head_misses_and_only_then() -> None:
    rng = np.random.default_rng(1)
    helps = mask_fusion.compare_scorers(scorer_rows(rng, True), "MT_Free", 300, 50)
    assert helps["images"] == 3 * 100 and helps["defective_images"] == 3 * 40
    scorers = helps["scorers"]
    assert set(scorers) == {"head", "mask1", "head+mask1", "max(head,mask1)", "fitted(head,mask1)"}
    head = scorers["head"]["per_class_recall_at_1pct_fa"]
    assert head["MT_Crack"] == 1.0 and head["MT_Break"] < 0.1  # breaks look clean to it
    fused = scorers["max(head,mask1)"]["per_class_recall_at_1pct_fa"]
    assert fused["MT_Crack"] >= 0.95 and fused["MT_Break"] >= 0.95
    assert scorers["fitted(head,mask1)"]["recall_at_1pct_fa"]["value"] > 0.95
    blind = mask_fusion.compare_scorers(scorer_rows(rng, False), "MT_Free", 300, 50)["scorers"]
    assert blind["max(head,mask1)"]["per_class_recall_at_1pct_fa"]["MT_Break"] < 0.2
    no_reference = [r for r in scorer_rows(rng, True) if not (r["fold"] == 2 and r["split"] == "val")]
    with pytest.raises(ValueError, match="fold 2 has no clean validation rows"):
        mask_fusion.compare_scorers(no_reference, "MT_Free", 300, 10)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (view_fusion, ["--rows", "no/such/folder"], "no fold rows folder"),
        (mask_fusion, ["--models", "no/such/folder"], "no fold model in"),
    ],
)
def test_a_missing_folder_is_explained_in_one_line(
    module, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_mask_windows_must_be_whole_pixels(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "a,b"):
        with pytest.raises(SystemExit) as exit_info:
            mask_fusion.main(["--windows", bad])
        assert exit_info.value.code == 2 and "--windows" in capsys.readouterr().err
