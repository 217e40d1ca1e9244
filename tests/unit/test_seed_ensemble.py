"""Seed ensembles out of fold: the logits are averaged before the per-fold normalisation, the folds are
those every run holds, and runs that scored different images are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtdefect.cv.seed_ensemble import common_folds, compare_runs, ensemble_scores, main, selected_run


def fold_result(fold: int, defect_scores: list[float], seed: int = 0, objective: float = 0.5) -> dict:
    """A fold of 100 clean images (scores spread below 0.5) and a few defective ones."""
    rng = np.random.default_rng(seed)
    clean = rng.uniform(0.01, 0.5, 100)
    rows = [
        {"image": f"free/{fold}_{i}.jpg", "class": "MT_Free", "group": f"F/{fold}_{i}", "score": float(s)}
        for i, s in enumerate(clean)
    ]
    rows += [
        {"image": f"break/{fold}_{i}.jpg", "class": "MT_Break", "group": f"MT_Break/{fold}_{i}", "score": s}
        for i, s in enumerate(defect_scores)
    ]
    reference = rng.uniform(0.01, 0.5, 40).tolist()
    return {
        "fold": fold,
        "rows": rows,
        "reference_scores": reference,
        "validation": {"val/objective": objective},
    }


def test_the_ensemble_averages_logits_and_normalises_them_against_its_own_reference() -> None:
    a, b = fold_result(0, [0.9, 0.2]), fold_result(0, [0.2, 0.9])
    b["reference_scores"] = a["reference_scores"]
    for row_a, row_b in zip(a["rows"], b["rows"], strict=True):  # the same clean scores in both runs
        row_b["score"] = row_a["score"] if row_a["class"] == "MT_Free" else row_b["score"]
    rows, z = ensemble_scores([a, b])
    assert [r["image"] for r in rows] == [r["image"] for r in a["rows"]]
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    # each defect is missed by one run (logit of 0.2 among the clean) and found by the other;
    # averaged, both sit at the mean logit of 0.9 and 0.2, the same for both
    assert z["ensemble"][-1] == pytest.approx(z["ensemble"][-2])
    reference = logit(np.array(a["reference_scores"]))
    centre = np.median(reference)
    spread = 1.4826 * np.median(np.abs(reference - centre))
    assert z["ensemble"][-1] == pytest.approx(((logit(0.9) + logit(0.2)) / 2 - centre) / spread)
    assert z["seed_0"][-2] == pytest.approx((logit(0.9) - centre) / spread)


def test_identical_runs_make_an_ensemble_that_changes_nothing() -> None:
    runs = [[fold_result(f, [0.95, 0.6, 0.3], seed=f) for f in range(2)] for _ in range(2)]
    summary = compare_runs(runs, "MT_Free", group_gap=None, n_resamples=50)
    assert summary["images"] == 206 and summary["defective_images"] == 6
    for key in ("auroc", "recall_at_1pct_fa", "tile_recall_at_1pct_fa"):
        assert summary["ensemble"][key]["value"] == pytest.approx(summary["seed_0"][key]["value"])
        assert summary["seed_effect"]["seed_1"][key]["value"] == pytest.approx(0.0)
        assert summary["ensemble_gain"]["seed_0"][key]["value"] == pytest.approx(0.0)


def test_the_selected_run_is_the_one_with_the_better_inner_validation_in_each_fold() -> None:
    """Run 0 finds every defect in fold 0 and none in fold 1, run 1 the reverse; the validation
    objective points at the finder in fold 0 only, so the selection finds half of them."""
    finds, misses = [0.99, 0.98], [0.02, 0.03]
    run_0 = [fold_result(0, finds, objective=0.9), fold_result(1, misses, seed=1, objective=0.9)]
    run_1 = [fold_result(0, misses, objective=0.1), fold_result(1, finds, seed=1, objective=0.2)]
    for a, b in zip(run_0, run_1, strict=True):  # the same clean images and reference in both runs
        b["reference_scores"] = a["reference_scores"]
        for row_a, row_b in zip(a["rows"], b["rows"], strict=True):
            row_b["score"] = row_a["score"] if row_a["class"] == "MT_Free" else row_b["score"]
    assert [selected_run(fold) for fold in zip(run_0, run_1, strict=True)] == [0, 0]
    summary = compare_runs([run_0, run_1], "MT_Free", group_gap=None, n_resamples=20)
    assert summary["selected_runs"] == [0, 0]
    assert summary["selected"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
    assert summary["selection_gain"]["seed_0"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.0)
    run_1[1]["validation"]["val/objective"] = 0.95  # now the validation points at the finder in both
    summary = compare_runs([run_0, run_1], "MT_Free", group_gap=None, n_resamples=20)
    assert summary["selected_runs"] == [0, 1] and summary["selected"]["recall_at_1pct_fa"]["value"] == 1.0
    assert summary["selection_gain"]["seed_1"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)


def test_runs_that_scored_other_images_are_refused() -> None:
    a, b = fold_result(0, [0.9]), fold_result(0, [0.9, 0.8])
    with pytest.raises(ValueError, match="different held-out images"):
        ensemble_scores([a, b])


def test_only_folds_every_run_holds_are_used_and_written(tmp_path: Path, monkeypatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for run, folds in ((first, (0, 1, 2)), (second, (1, 2))):
        run.mkdir()
        for f in folds:
            (run / f"fold_{f}.json").write_text(json.dumps(fold_result(f, [0.9, 0.4], seed=f)))
    folds, results = common_folds([first, second])
    assert folds == [1, 2] and [[r["fold"] for r in run] for run in results] == [[1, 2], [1, 2]]
    (tmp_path / "params.yaml").write_text(
        "data: {free_class: MT_Free, split: {group_gap: null}}\n"
        "cv: {bootstrap: 20, seed: 0, reports_dir: out}\n"
    )
    monkeypatch.chdir(tmp_path)
    main([str(first), str(second), "--out", "out/ens.json"])
    written = json.loads((tmp_path / "out" / "ens.json").read_text())
    assert written["folds"] == [1, 2] and written["images"] == 204
    assert set(written["ensemble_gain"]) == set(written["selection_gain"]) == {"seed_0", "seed_1"}
    with pytest.raises(FileNotFoundError):
        common_folds([first, tmp_path / "empty"])
