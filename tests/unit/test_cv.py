"""Grouped k-fold cross-validation: folds keep tiles together, every group is predicted exactly once,
a fold's training never reads its held-out tiles, a finished fold is not recomputed, and the pooled
numbers and intervals are what hand arithmetic says."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from mtdefect import metrics
from mtdefect.cv import fold as cv_fold
from mtdefect.cv.jobs import pending, run_folds
from mtdefect.cv.pool import pool, tile_ids
from mtdefect.data.folds import assign_folds, fold_assignment, group_ids, write_fold_manifests
from mtdefect.data.split import read_manifest
from mtdefect.devtools.synthetic import CLASSES, TOP, synthetic_pair

CONF = str(Path(__file__).resolve().parents[2] / "conf")
LIGHTINGS = 2  # photographs per synthetic tile, capture numbers 30 apart


def tile_samples(tiles_per_class: dict[str, int]) -> list[tuple[str, str]]:
    return [
        (cls, f"exp{light}_num_{1000 * tile + 30 * light}")
        for cls, tiles in tiles_per_class.items()
        for tile in range(tiles)
        for light in range(LIGHTINGS)
    ]


def test_folds_hold_whole_tiles_and_cover_every_group_once() -> None:
    counts = {"MT_Blowhole": 7, "MT_Crack": 3, "MT_Free": 23, "MT_Fray": 5}
    samples = tile_samples(counts)
    groups = group_ids(samples, 300)
    assert len(set(groups.values())) == sum(counts.values())  # the two lightings share a group
    folds = assign_folds(samples, 5, seed=7, group_gap=300)
    assert folds == assign_folds(samples, 5, seed=7, group_gap=300)  # seeded
    assert folds != assign_folds(samples, 5, seed=8, group_gap=300)
    fold_of_group: dict[str, set[int]] = {}
    for sample, fold in folds.items():
        fold_of_group.setdefault(groups[sample], set()).add(fold)
    assert all(len(f) == 1 for f in fold_of_group.values())  # no tile in two folds
    for cls, tiles in counts.items():  # stratified: each class spread over min(k, groups) folds
        used = Counter(folds[s] for s in samples if s[0] == cls)
        assert len(used) == min(5, tiles)
        assert max(used.values()) - min(used.values()) <= LIGHTINGS * (1 + (tiles > 5))
    held_out = Counter()
    for fold in range(5):
        split = fold_assignment(samples, fold, 5, seed=7, group_gap=300, val_fraction=0.2)
        test = {s for s, name in split.items() if name == "test"}
        assert test == {s for s, f in folds.items() if f == fold}
        held_out.update(test)
        by_split = {
            name: {groups[s] for s, n in split.items() if n == name} for name in ("train", "val", "test")
        }
        assert not (by_split["train"] & by_split["val"]) and not (
            by_split["test"] & (by_split["train"] | by_split["val"])
        )
        assert by_split["val"] and by_split["train"]
    assert set(held_out) == set(samples) and set(held_out.values()) == {1}  # each image held out once


def test_fold_rejects_bad_arguments() -> None:
    samples = tile_samples({"MT_Free": 4})
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(samples, 1, 0, 300)
    with pytest.raises(ValueError, match="outside"):
        fold_assignment(samples, 3, 3, 0, 300, 0.2)


@pytest.fixture(scope="module")
def lit_dataset(tmp_path_factory) -> Path:
    """A loaded synthetic dataset whose tiles are photographed twice (capture numbers 30 apart)."""
    from mtdefect.data.source import load_dataset

    base = tmp_path_factory.mktemp("cv-synthetic")
    for ci, cls in enumerate(CLASSES):
        folder = base / "src" / TOP / cls / "Imgs"
        folder.mkdir(parents=True)
        for tile in range(5):
            for light in range(LIGHTINGS):
                image, mask = synthetic_pair(ci * 100 + tile * 10 + light, defective=cls != "MT_Free")
                stem = f"exp{light}_num_{1000 * tile + 30 * light}"
                (folder / f"{stem}.jpg").write_bytes(image)
                (folder / f"{stem}.png").write_bytes(mask)
    (base / "src" / TOP / "README.md").write_text("synthetic")
    load_dataset(str(base / "src"), base / "tiles")
    return base / "tiles"


def cv_config(tmp_path: Path, dataset_dir: Path, k: int = 3):
    overrides = [
        "debug=fast",
        "logger=none",
        f"paths.data_dir={dataset_dir}",
        f"paths.manifest={tmp_path / 'split.csv'}",
        f"paths.model_dir={tmp_path / 'model'}",
        f"paths.checkpoint_dir={tmp_path / 'ckpt'}",
        "model.decoder_channels=[32,16,16,8,8]",
        "model.pretrained=none",
        "data.module.crop_size=32",
        "head_refit.enabled=false",
        f"cv.k={k}",
        "cv.val_fraction=0.25",
        "cv.bootstrap=50",
        f"cv.manifest_dir={tmp_path / 'cv'}",
        f"cv.model_dir={tmp_path / 'models'}",
        f"cv.checkpoint_dir={tmp_path / 'ckpt-cv'}",
        f"cv.rows_dir={tmp_path / 'rows'}",
        f"cv.reports_dir={tmp_path / 'reports'}",
    ]
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # as params.yaml holds it


def test_fold_config_points_every_path_at_the_fold(tmp_path: Path, lit_dataset: Path) -> None:
    cfg = cv_config(tmp_path, lit_dataset)
    paths = cv_fold.CvPaths.from_cfg(cfg)
    fcfg = cv_fold.fold_config(cfg, 1, paths)
    assert fcfg.data.module.manifest == fcfg.paths.manifest == str(tmp_path / "cv" / "fold_1.csv")
    assert (
        fcfg.callbacks.model_checkpoint.dirpath
        == fcfg.trainer.default_root_dir
        == str(tmp_path / "ckpt-cv" / "fold_1")
    )
    assert fcfg.paths.model_dir == str(tmp_path / "models" / "fold_1") and fcfg.logger is None
    with open_dict(cfg):  # a key that still names the pipeline's manifest is refused
        cfg.data.module.extra_manifest = cfg.paths.manifest
    with pytest.raises(ValueError, match="extra_manifest"):
        cv_fold.fold_config(cfg, 1, paths)


def test_cross_validation_end_to_end(
    tmp_path: Path, lit_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 folds on a tiny synthetic archive: the held-out files are never opened before prediction,
    every image is predicted exactly once, and a second run recomputes nothing."""
    from mtdefect.stages.cv import stage

    cfg = cv_config(tmp_path, lit_dataset)
    write_fold_manifests(lit_dataset, tmp_path / "cv", 3, 42, 300, 0.25)
    held_out = {
        fold: {
            str(lit_dataset / r.image) for r in read_manifest(tmp_path / "cv" / f"fold_{fold}.csv", "test")
        }
        | {str(lit_dataset / r.mask) for r in read_manifest(tmp_path / "cv" / f"fold_{fold}.csv", "test")}
        for fold in range(3)
    }
    state = {"fold": None, "predicting": False, "early": [], "late": set()}
    real_score = cv_fold.score_held_out

    def watched_score(*args, **kwargs):
        state["predicting"] = True
        try:
            return real_score(*args, **kwargs)
        finally:
            state["predicting"] = False

    def audit(event: str, args: tuple) -> None:
        if event == "open" and state["fold"] is not None and isinstance(args[0], str | os.PathLike):
            path = os.path.abspath(os.fspath(args[0]))
            if path in held_out[state["fold"]]:
                (state["late"].add(path) if state["predicting"] else state["early"].append(path))

    real_run_fold = cv_fold.run_fold

    def tracked_run_fold(c, fold):
        state["fold"] = fold
        try:
            return real_run_fold(c, fold)
        finally:
            state["fold"] = None

    monkeypatch.setattr(cv_fold, "score_held_out", watched_score)
    monkeypatch.setattr("mtdefect.cv.jobs.run_fold", tracked_run_fold)
    sys.addaudithook(audit)  # audit hooks cannot be removed; it only acts while state["fold"] is set
    stage(cfg)
    assert state["early"] == []  # training, head, calibration never opened a held-out file
    assert state["late"] == set().union(*held_out.values())  # prediction read every one of them

    summary = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    images = sorted(str(p.relative_to(lit_dataset)) for p in lit_dataset.glob("MT_*/*.jpg"))
    rows = [
        {**row, "fold": f}
        for f in range(3)
        for row in json.loads((tmp_path / "rows" / f"fold_{f}.json").read_text())["rows"]
    ]
    assert sorted(r["image"] for r in rows) == images  # every image predicted exactly once
    assert summary["images"] == len(images) and summary["groups"] == len(images) // LIGHTINGS
    assert summary["k"] == 3 and [f["fold"] for f in summary["per_fold"]] == [0, 1, 2]
    for key in ("dice", "auroc", "recall_at_1pct_fa", "class_top1"):
        entry = summary[key]
        assert set(entry) >= {"value", "ci_low", "ci_high"}
        if entry["value"] is not None and entry["ci_low"] is not None:
            assert entry["ci_low"] <= entry["ci_high"]
    assert (tmp_path / "reports" / "plots" / "roc.json").exists()

    # cv.mask_fusion: one forward pass gives the head's and the mask's scores; the one the fold's
    # decision uses is the score its rows hold, and the clean validation images come with them
    from mtdefect.cv.mask_fusion import score_fold
    from mtdefect.inference import ModelSettings

    post = ModelSettings.load(tmp_path / "models" / "fold_0").postprocess
    manifest = tmp_path / "cv" / "fold_0.csv"
    scored = score_fold(
        tmp_path / "models" / "fold_0", lit_dataset, manifest, "MT_Free", 300, [post.score_window]
    )
    decided = {r["image"]: r["score"] for r in rows if r["fold"] == 0}
    key = "head" if post.score_source == "head" else f"mask{post.score_window}"
    held = {r["image"]: r["scores"][key] for r in scored if r["split"] == "test"}
    assert held.keys() == decided.keys()
    assert all(held[image] == pytest.approx(decided[image], abs=1e-6) for image in held)
    clean_val = [r.image for r in read_manifest(manifest, "val") if r.class_name == "MT_Free"]
    assert sorted(r["image"] for r in scored if r["split"] == "val") == sorted(clean_val)

    assert pending(cfg, [0, 1, 2]) == []

    # an inference-only lever judged on the same fold models: recalibrated on each inner val
    from mtdefect.cv.rescore import parse_overrides, rescore

    rescored = rescore(cfg, "pad_edge", parse_overrides(["preprocess.pad=edge"]))
    assert rescored["images"] == len(images) and rescored["recipe"]["rescored_with"] == {
        "preprocess": {"pad": "edge"}
    }
    again = json.loads((tmp_path / "reports" / "pad_edge" / "folds" / "fold_1.json").read_text())
    assert sorted(r["image"] for r in again["rows"]) == sorted(r["image"] for r in rows if r["fold"] == 1)
    with pytest.raises(ValueError, match="unsupported override"):
        parse_overrides(["trainer.max_epochs=3"])

    # a head-refit lever judged on the same fold models: the head refitted on each fold's training
    # tiles (hardest clean rows weighted), the fold's saved head still a candidate
    refitted = rescore(
        cfg, "hard_negatives", parse_overrides(["head_refit.hard_negative_weight=4", "head_refit.l2=[0.001]"])
    )
    assert refitted["images"] == len(images)
    fold_file = json.loads((tmp_path / "reports" / "hard_negatives" / "folds" / "fold_0.json").read_text())
    report = fold_file["head_refit"]
    assert [c["l2"] for c in report["candidates"]] == [None, 0.001]
    assert report["candidates"][0]["source"] == "the fold's saved head"
    assert report["hard_negatives"] == {"fraction": 0.1, "weight": 4.0}
    assert report["train_tiles"] == len(read_manifest(tmp_path / "cv" / "fold_0.csv", "train"))

    # the head-refit screen: from features cached once per fold model, its ``config`` variant gives
    # the scores a refit rescore gets through the service's path; a second screen reads the cache
    from mtdefect.screen import head_refit as screen

    rescore(cfg, "refit", parse_overrides(["head_refit.keep_current_head=false"]))
    rescore(
        cfg, "binary", parse_overrides(["head_refit.keep_current_head=false", "head_refit.objective=binary"])
    )
    specs = {
        k: v for k, v in screen.variants(cfg.head_refit).items() if k in ("config", "saved_head", "binary")
    }
    for fold in range(3):
        features = screen.cached_fold_features(
            tmp_path / "models" / f"fold_{fold}",
            lit_dataset,
            tmp_path / "cv" / f"fold_{fold}.csv",
            300,
            tmp_path / "features",
        )
        free = list(features["class_names"]).index("MT_Free")
        for variant, run in (("config", "refit"), ("binary", "binary")):
            fitted = screen.fit_variant(features, specs[variant], free)
            served = json.loads((tmp_path / "reports" / run / "folds" / f"fold_{fold}.json").read_text())
            by_image = {r["image"]: r["score"] for r in served["rows"]}
            held_out = [by_image[i] for i in features["test_images"]]
            assert fitted["held_out"] == pytest.approx(held_out, abs=1e-5), variant
            assert sorted(fitted["reference"]) == pytest.approx(sorted(served["reference_scores"]), abs=1e-5)
            assert fitted["l2"] == served["head_refit"]["chosen"]["l2"]
        assert served["head_refit"]["objective"] == "binary"
    screened = screen.study(cfg, [tmp_path / "models"], tmp_path / "features", specs)
    assert set(screened["variants"]) == set(specs) and screened["images"] == len(images)
    assert screened["tiles"] == len(set(tile_ids(rows, 300)))  # no two folds' tiles merged
    assert "gain_vs_config" not in screened["variants"]["config"]
    gain = screened["variants"]["binary"]["gain_vs_config"]["recall_at_1pct_fa"]
    assert gain["value"] == pytest.approx(gain["after"] - gain["before"])
    assert [c["fold"] for c in screened["variants"]["saved_head"]["chosen_l2"]] == [0, 1, 2]
    with monkeypatch.context() as patched:
        patched.setattr(screen, "fold_features", lambda *_: pytest.fail("cached features computed again"))
        assert screen.study(cfg, [tmp_path / "models"], tmp_path / "features", specs) == screened

    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("mtdefect.train.train", no_training)
    run_folds(cfg, [0, 1, 2])  # all finished: nothing runs
    monkeypatch.setattr(cv_fold, "code_digest", lambda: "changed code")
    assert pending(cfg, [0, 1, 2]) == [0, 1, 2]  # after a code change every fold is computed again
    monkeypatch.undo()
    with open_dict(cfg):
        cfg.seed = 43  # another config: every fold is pending again
    assert pending(cfg, [0, 1, 2]) == [0, 1, 2]


def rows_for(scores_free, scores_defect, groups_free=None, groups_defect=None):
    rows = []
    for i, s in enumerate(scores_free):
        g = groups_free[i] if groups_free else f"MT_Free/{i}"
        rows.append(
            dict(
                image=f"f{i}",
                **{"class": "MT_Free"},
                group=g,
                fold=i % 2,
                tp=0,
                fp=2,
                fn=0,
                fp_border=1,
                score=s,
                defective=s > 0.5,
                top1=None,
            )
        )
    for i, s in enumerate(scores_defect):
        g = groups_defect[i] if groups_defect else f"MT_Crack/{i}"
        rows.append(
            dict(
                image=f"d{i}",
                **{"class": "MT_Crack"},
                group=g,
                fold=i % 2,
                tp=3,
                fp=1,
                fn=1,
                fp_border=0,
                score=s,
                defective=s > 0.5,
                top1="MT_Crack" if i % 2 else "MT_Break",
            )
        )
    return rows


def test_recall_at_false_alarm_budget_never_exceeds_it() -> None:
    free = np.linspace(0.0, 0.99, 200)  # 200 clean tiles: 2 may be flagged at 1 %
    defect = np.array([0.985, 0.99, 0.5, 0.3])
    scores = np.concatenate([free, defect])
    labels = np.r_[np.zeros(200, bool), np.ones(4, bool)]
    result = metrics.recall_at_false_alarm_rate(scores, labels, 0.01)
    assert result["false_alarm_rate"] <= 0.01
    assert result["threshold"] == pytest.approx(free[-3])
    assert result["recall"] == pytest.approx(2 / 4)


def test_pool_sums_pixels_and_resamples_whole_groups() -> None:
    rows = rows_for([0.1, 0.2, 0.9, 0.3], [0.8, 0.7, 0.95, 0.4])
    summary = pool(rows, "MT_Free", n_resamples=200)
    assert summary["dice"]["value"] == pytest.approx(2 * 12 / (2 * 12 + 4 + 4))
    assert summary["per_class_dice"]["MT_Crack"]["value"] == summary["dice"]["value"]
    assert summary["class_top1"]["value"] == pytest.approx(0.5)
    assert summary["border_fp_share"]["value"] == pytest.approx(4 / 12)
    assert summary["recall_at_decision"]["value"] == pytest.approx(3 / 4)
    assert summary["false_alarm_rate_at_decision"]["value"] == pytest.approx(1 / 4)
    assert summary["spread"]["dice"]["min"] <= summary["spread"]["dice"]["max"]
    # per fold and class: fold 0 holds two Crack images (3 tp, 1 fp, 1 fn each)
    assert [f["per_class_dice"] for f in summary["per_fold"]] == [{"MT_Crack": 0.75}] * 2
    # one group holding everything: every resample is the same set, the interval collapses
    same = rows_for([0.1, 0.9], [0.8, 0.2], ["T/1", "T/1"], ["T/1", "T/1"])
    one = pool(same, "MT_Free", n_resamples=50)
    assert one["auroc"]["ci_low"] == one["auroc"]["ci_high"] == one["auroc"]["value"]
    with pytest.raises(ValueError, match="more than one fold"):
        pool(rows + rows[:1], "MT_Free")


def test_written_manifests_are_ordinary_manifests(tmp_path: Path, lit_dataset: Path) -> None:
    written = write_fold_manifests(lit_dataset, tmp_path, 4, 1, 300, 0.25)
    assert sorted(written) == [0, 1, 2, 3]
    with open(tmp_path / "fold_2.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["image", "mask", "class", "split"]
    assert {r.split for r in read_manifest(tmp_path / "fold_2.csv")} == {"train", "val", "test"}


def test_physical_tiles_split_a_group_where_the_lighting_starts_again() -> None:
    from mtdefect.data.split import physical_tiles

    lit = [(4, 85602), (5, 85642), (6, 85665), (1, 85781), (2, 85846), (6, 86064), (2, 3211), (3, 3223)]
    items = [("MT_Crack", f"exp{e}_num_{n}") for e, n in lit]
    tiles = physical_tiles(items, 300)
    assert len(set(tiles.values())) == 3  # one two-tile group split in two, and a tile of its own
    assert tiles[items[0]] == tiles[items[2]] != tiles[items[3]] == tiles[items[5]]


def test_tile_decision_fuses_the_views_of_each_tile() -> None:
    """One bad view of a clean tile: the median of its views stays low, the max does not."""
    from mtdefect.cv.pool import tile_level

    rows = []
    for tile in range(120):  # clean tiles, three lightings each; every tenth has one bright view
        for light, score in enumerate([0.1, 0.2, 0.95 if tile % 10 == 0 else 0.15], start=1):
            rows.append(
                {
                    "image": f"MT_Free/exp{light}_num_{1000 * tile + 30 * light}.jpg",
                    "class": "MT_Free",
                    "group": f"MT_Free/{tile}",
                    "score": score,
                }
            )
    for tile in range(10):  # defective tiles: two views show it, one does not
        for light, score in enumerate([0.9, 0.8, 0.3], start=1):
            rows.append(
                {
                    "image": f"MT_Crack/exp{light}_num_{1000 * tile + 30 * light}.jpg",
                    "class": "MT_Crack",
                    "group": f"MT_Crack/{tile}",
                    "score": score,
                }
            )
    result = tile_level(rows, "MT_Free", 300, n_resamples=50)
    assert result["tiles"] == 130 and result["defective_tiles"] == 10 and result["views_per_tile"] == 3
    assert result["median"]["tile_recall_at_1pct_fa"]["value"] == 1.0
    assert result["median"]["auroc"]["value"] == 1.0
    assert result["max"]["tile_recall_at_1pct_fa"]["value"] == 0.0  # 12 clean tiles score 0.95


def test_fused_decision_normalises_each_scorer_by_its_fold_clean_validation() -> None:
    """Two scorers that each miss half the defects (on different tiles) catch them all fused; the
    normalisation uses only the reference (clean validation) scores, on each scorer's own scale."""
    from mtdefect.cv.decision import compare, robust_z

    assert robust_z(np.array([3.0]), np.array([1.0, 2.0, 3.0]))[0] == pytest.approx(1 / 1.4826)
    rng = np.random.default_rng(0)
    rows, reference = [], {}
    for fold in (0, 1):
        for i in range(100):
            rows.append(
                {
                    "image": f"MT_Free/f{fold}_{i}.jpg",
                    "class": "MT_Free",
                    "group": f"MT_Free/{fold}.{i}",
                    "fold": fold,
                    "head": float(rng.uniform(0.01, 0.1)),
                    "anomaly": float(rng.uniform(1, 2)),
                }
            )
        for i in range(10):  # head sees the even ones, the anomaly branch the odd ones
            rows.append(
                {
                    "image": f"MT_Crack/d{fold}_{i}.jpg",
                    "class": "MT_Crack",
                    "group": f"MT_Crack/{fold}.{i}",
                    "fold": fold,
                    "head": 0.9 if i % 2 == 0 else 0.05,
                    "anomaly": 5.0 if i % 2 else 1.5,
                }
            )
        reference[fold] = {"head": rng.uniform(0.01, 0.1, 50), "anomaly": rng.uniform(1, 2, 50)}
    result = compare(rows, reference, "MT_Free", 300, n_resamples=30)
    assert result["head"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
    assert result["anomaly"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
    assert result["fused"]["recall_at_1pct_fa"]["value"] == pytest.approx(1.0)
    assert result["fused"]["per_class_recall_at_1pct_fa"] == {"MT_Crack": 1.0}
    assert result["fused_max"]["recall_at_1pct_fa"]["value"] == pytest.approx(1.0)  # either branch rejects
    assert result["head_raw"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
    assert result["fused_fitted"]["recall_at_1pct_fa"]["value"] == pytest.approx(1.0)
    gain = result["gain_over_head"]  # paired: the same images, each resample scoring both
    assert gain["fused_max"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.5)
    assert gain["fused_max"]["recall_at_1pct_fa"]["ci_low"] > 0  # the fusion's gain is real
    assert gain["anomaly"]["recall_at_1pct_fa"]["value"] == pytest.approx(0.0)
    assert gain["fused"]["tile_recall_at_1pct_fa"]["value"] == pytest.approx(0.5)  # one view per tile
    assert gain["fused"]["auroc"]["value"] > 0


def test_the_fitted_combiner_never_scores_a_fold_with_weights_that_saw_it() -> None:
    """Cross-fitting: changing one fold's labels changes the other folds' scores, never its own."""
    from mtdefect.cv.decision import cross_fitted, fit_logistic

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    y = (x @ np.array([2.0, -1.0]) + 0.5 + rng.normal(scale=0.5, size=300)) > 0
    w = fit_logistic(x, y, l2=0.0)
    assert w[1] > 0 > w[2] and abs(w[1] / w[2] + 2) < 0.6  # recovers the direction
    folds = np.repeat([0, 1, 2], 100)
    before = cross_fitted(x, y, folds)
    flipped = y.copy()
    flipped[folds == 0] = ~flipped[folds == 0]
    after = cross_fitted(x, flipped, folds)
    np.testing.assert_array_equal(before[folds == 0], after[folds == 0])
    assert not np.allclose(before[folds == 1], after[folds == 1])


def test_leave_one_class_out_never_trains_on_the_class_it_scores(
    tmp_path: Path, lit_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One job per defect class: its manifest has no image of that class outside ``test``, its
    held-out clean tiles are whole groups, and unseen.json has every class."""
    from mtdefect.stages.unseen import stage

    cfg = cv_config(tmp_path, lit_dataset)
    with open_dict(cfg):
        cfg.cv.unseen.manifest_dir = str(tmp_path / "unseen")
        cfg.cv.unseen.model_dir = str(tmp_path / "unseen-models")
        cfg.cv.unseen.checkpoint_dir = str(tmp_path / "unseen-ckpt")
        cfg.cv.unseen.rows_dir = str(tmp_path / "unseen-rows")
        cfg.cv.unseen.clean_test_fraction = 0.4
    stage(cfg)
    defect_classes = [c for c in CLASSES if c != "MT_Free"]
    for left_out in defect_classes:
        records = read_manifest(tmp_path / "unseen" / f"unseen_{left_out}.csv")
        assert {r.split for r in records if r.class_name == left_out} == {"test"}
        test_classes = {r.class_name for r in records if r.split == "test"}
        assert test_classes == {left_out, "MT_Free"}
        groups = group_ids([(r.class_name, Path(r.image).stem) for r in records], 300)
        free_test = {
            groups[(r.class_name, Path(r.image).stem)]
            for r in records
            if r.split == "test" and r.class_name == "MT_Free"
        }
        free_train = {
            groups[(r.class_name, Path(r.image).stem)]
            for r in records
            if r.split != "test" and r.class_name == "MT_Free"
        }
        assert free_test and not (free_test & free_train)
    report = json.loads((tmp_path / "reports" / "unseen.json").read_text())
    assert report["recipe"]["encoder"] == cfg.model.encoder and report["max_false_alarm_rate"] == 0.01
    summary = report["classes"]
    assert (
        sorted(summary) == defect_classes == sorted(j.removeprefix("unseen_") for j in report["job_seconds"])
    )
    for s in summary.values():
        assert s["images"] == 5 * LIGHTINGS and s["clean_tiles"] > 0
        for key in ("recall_at_1pct_fa", "auroc", "tile_recall_at_1pct_fa"):
            assert set(s[key]) == {"value", "ci_low", "ci_high"}, key
        assert 0.0 <= s["recall_at_1pct_fa"]["value"] <= 1.0

    # `cv.jobs` > 1 starts each job as `python -m mtdefect.cv.fold unseen_<class>` on params.yaml:
    # that entry point must find the job under cv.unseen.*, not the folds' folders (it did not)
    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished leave-one-class-out job was trained again")

    monkeypatch.setattr("mtdefect.stages._common.load_params", lambda *_: cfg)
    monkeypatch.setattr("mtdefect.train.train", no_training)
    cv_fold.main(["unseen_MT_Crack"])  # finished: found in cv.unseen.rows_dir, not recomputed
    assert cv_fold.job_config(cfg, 2) is cfg
    unseen_paths = cv_fold.CvPaths.from_cfg(cv_fold.job_config(cfg, "unseen_MT_Crack"))
    assert unseen_paths.manifest_dir == tmp_path / "unseen"


def test_left_out_summary_counts_tiles_and_bounds_recall_by_tile_groups() -> None:
    """Recall at ≤ 1 % false alarms of a left-out class: every defective image above every clean one
    gives 1.0 with an interval [1, 1]; a clean tile scoring above half the defective ones halves it
    and the interval, drawn by tile group, brackets the value."""
    from mtdefect.stages.unseen import left_out_summary

    def rows(defective_scores: list[float], clean_scores: list[float]) -> list[dict]:
        out = []
        for i, score in enumerate(defective_scores):  # two lightings per tile
            out.append(
                {
                    "class": "MT_Crack",
                    "group": f"MT_Crack/{i // 2}",
                    "image": f"MT_Crack/exp{i % 2 + 1}_num_{i // 2 * 1000 + i % 2 * 10}.jpg",
                    "score": score,
                    "defective": score > 0.5,
                }
            )
        for i, score in enumerate(clean_scores):
            out.append(
                {
                    "class": "MT_Free",
                    "group": f"MT_Free/{i // 2}",
                    "image": f"MT_Free/exp{i % 2 + 1}_num_{i // 2 * 1000 + i % 2 * 10}.jpg",
                    "score": score,
                    "defective": score > 0.5,
                }
            )
        return out

    perfect = left_out_summary(rows([0.9] * 8, [0.1] * 40), "MT_Crack", "MT_Free", 300, 0.01, 200)
    assert perfect["images"] == 8 and perfect["clean_images"] == 40 and perfect["tiles"] == 4
    assert perfect["clean_tiles"] == 20
    assert perfect["recall_at_1pct_fa"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert perfect["recall_at_decision"] == 1.0 and perfect["false_alarm_rate_at_decision"] == 0.0
    half = left_out_summary(
        rows([0.9] * 4 + [0.3] * 4, [0.1] * 39 + [0.5]), "MT_Crack", "MT_Free", 300, 0.01, 200
    )
    r = half["recall_at_1pct_fa"]
    assert r["value"] == 0.5 and r["ci_low"] <= 0.5 <= r["ci_high"] and r["ci_low"] < r["ci_high"]


def test_paired_difference_is_zero_for_the_same_run_and_sees_a_real_gain() -> None:
    from mtdefect.cv.compare import paired_difference

    before = rows_for([0.1, 0.2, 0.9, 0.3], [0.8, 0.7, 0.95, 0.4])
    same = paired_difference(before, [dict(r) for r in before], "MT_Free", n_resamples=50)
    assert all(
        e["value"] == e["ci_low"] == e["ci_high"] == 0.0 for k, e in same.items() if e["value"] is not None
    )
    better = [dict(r, tp=r["tp"] + 1, fn=max(r["fn"] - 1, 0)) for r in before]  # every defect found better
    gain = paired_difference(before, better, "MT_Free", n_resamples=50)
    assert gain["dice"]["value"] > 0 and gain["dice"]["ci_low"] > 0
    with pytest.raises(ValueError, match="same images"):
        paired_difference(before, before[1:], "MT_Free")


def test_compare_cli_explains_a_wrong_folder_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder without ``folds/fold_*.json`` (the fold files themselves, one level too deep), or two
    runs over different images: exit 1 with one line, and no half-written output."""
    from mtdefect.cv.compare import main

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for run, rows in ((run_a, rows_for([0.1, 0.2], [0.8])), (run_b, rows_for([0.1], [0.8]))):
        (run / "folds").mkdir(parents=True)
        (run / "folds" / "fold_0.json").write_text(json.dumps({"fold": 0, "rows": rows}))
    out = tmp_path / "out.json"
    for args, message in (
        ([str(run_a / "folds"), str(run_b), str(out)], "no fold rows in"),
        ([str(run_a), str(run_b), str(out)], "did not score the same images"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
    main([str(run_a), str(run_a), str(out)])
    assert json.loads(out.read_text())["difference"]["dice"]["value"] == 0.0
    # a lever tried on fold 1 only is paired with fold 1 of the baseline, and says so
    (run_a / "folds" / "fold_1.json").write_text(json.dumps({"fold": 1, "rows": rows_for([0.3], [0.9])}))
    (run_b / "folds" / "fold_0.json").unlink()
    (run_b / "folds" / "fold_1.json").write_text(json.dumps({"fold": 1, "rows": rows_for([0.3], [0.6])}))
    main([str(run_a), str(run_b), str(out)])
    result = json.loads(out.read_text())
    assert result["folds"] == [1] and result["difference"]["dice"]["value"] == 0.0


def test_compare_pools_a_lever_tried_under_several_seeds(tmp_path: Path) -> None:
    """Two (baseline, lever) pairs, one per seed: the rows of both seeds are pooled on each side (every
    image once per seed, its tile group kept), so a lever that helps under one seed only shows half
    the gain it shows there alone."""
    from mtdefect.cv.compare import main, paired_runs

    base = rows_for([0.1, 0.2, 0.3], [0.8, 0.7])
    better = [dict(r, tp=r["tp"] + 2, fn=max(r["fn"] - 2, 0)) for r in base]
    runs = {}
    for name, rows in (("base42", base), ("lever42", better), ("base43", base), ("lever43", base)):
        runs[name] = tmp_path / name
        (runs[name] / "folds").mkdir(parents=True)
        (runs[name] / "folds" / "fold_0.json").write_text(json.dumps({"fold": 0, "rows": rows}))
    before, after, folds = paired_runs([(runs["base42"], runs["lever42"]), (runs["base43"], runs["lever43"])])
    assert folds == [0] and len(before) == len(after) == 2 * len(base)
    assert {r["image"] for r in before} == {f"{r['image']}#{k}" for r in base for k in (0, 1)}
    assert sorted(r["group"] for r in before) == sorted(2 * [r["group"] for r in base])
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    main([str(runs["base42"]), str(runs["lever42"]), str(one)])
    main([str(runs["base42"]), str(runs["lever42"]), str(runs["base43"]), str(runs["lever43"]), str(two)])
    alone, pooled = (json.loads(p.read_text()) for p in (one, two))
    assert "pairs" not in alone and len(pooled["pairs"]) == 2
    assert 0 < pooled["difference"]["dice"]["value"] < alone["difference"]["dice"]["value"]
    with pytest.raises(SystemExit) as exit_info:  # an unpaired folder: usage, exit 2
        main([str(runs["base42"]), str(runs["lever42"]), str(runs["base43"]), str(two)])
    assert exit_info.value.code == 2


def test_compare_judges_the_decision_on_each_folds_own_scale(tmp_path: Path) -> None:
    """``decision_scale`` puts each fold's scores on the scale its served threshold sees (a robust z
    against that fold's clean validation scores): a run with the same held-out scores whose fold 1
    scored its clean validation tiles lower (so that fold's threshold sits lower) ranks the same
    pooled (``difference`` zero) and differently on the decision's scale; runs written without the
    validation scores are skipped, with the reason."""
    from mtdefect.cv.compare import main

    def fold(number: int, reference: list[float]) -> dict:
        clean = [0.05 + 0.02 * i + 0.3 * number for i in range(20)]
        rows = rows_for(clean, [0.5 + 0.1 * number, 0.62 + 0.3 * number, 0.9, 0.95])
        for r in rows:
            r["image"], r["group"] = f"{number}-{r['image']}", f"{r['group']}-{number}"
        return {"fold": number, "rows": rows, "reference_scores": reference}

    steady = [0.1, 0.2, 0.3, 0.4, 0.5]
    runs = {
        "base": [fold(0, steady), fold(1, [0.4, 0.5, 0.6, 0.7, 0.8])],
        "lever": [fold(0, steady), fold(1, [0.1, 0.15, 0.2, 0.25, 0.3])],  # fold 1: clean val scored lower
        "old": [{k: v for k, v in fold(n, steady).items() if k != "reference_scores"} for n in (0, 1)],
    }
    for name, results in runs.items():
        (tmp_path / name / "folds").mkdir(parents=True)
        for result in results:
            (tmp_path / name / "folds" / f"fold_{result['fold']}.json").write_text(json.dumps(result))
    out = tmp_path / "out.json"
    main([str(tmp_path / "base"), str(tmp_path / "base"), str(out)])
    same = json.loads(out.read_text())["decision_scale"]
    assert all(same[k]["value"] == 0.0 for k in ("auroc", "recall_at_1pct_fa", "tile_recall_at_1pct_fa"))
    main([str(tmp_path / "base"), str(tmp_path / "lever"), str(out)])
    result = json.loads(out.read_text())
    assert result["difference"]["auroc"]["value"] == 0.0  # the same raw scores
    scale = result["decision_scale"]
    assert scale["auroc"]["value"] != 0.0 and scale["auroc"]["after"] != scale["auroc"]["before"]
    assert {"before", "after", "ci_low", "ci_high"} <= set(scale["recall_at_1pct_fa"])
    main([str(tmp_path / "old"), str(tmp_path / "old"), str(out)])
    assert "clean validation reference" in json.loads(out.read_text())["decision_scale"]["skipped"]


def test_the_recipe_records_an_ema_of_the_weights() -> None:
    from omegaconf import OmegaConf

    from mtdefect.cv.summary import weight_averaging

    checkpoint = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "monitor": "val/dice"}
    plain = OmegaConf.create({"callbacks": {"model_checkpoint": checkpoint}})
    assert weight_averaging(plain) is None and weight_averaging(OmegaConf.create({})) is None
    ema = {
        "_target_": "lightning.pytorch.callbacks.EMAWeightAveraging",
        "decay": 0.995,
        "update_starting_at_step": 600,
    }
    with_ema = OmegaConf.create({"callbacks": {"model_checkpoint": checkpoint, "ema": ema}})
    assert weight_averaging(with_ema) == {"decay": 0.995, "start_step": 600}
