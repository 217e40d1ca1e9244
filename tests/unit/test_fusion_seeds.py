"""Head + anomaly fusion pooled over seeds (mtdefect.cv.fusion_seeds): one run reproduces cv.decision,
several runs pool with tiles per run and shared groups, and rows without a clean reference are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtdefect.cv.decision import branch_rows, compare
from mtdefect.cv.fusion_seeds import main, pooled_fusion


def write_run(root: Path, seed: int, folds: int = 2, keep_reference: bool = True) -> Path:
    """A reports folder: per fold 60 clean and 6 defective photographs (3 tiles × 2 lightings,
    captures 1 apart), head probabilities in ``folds/`` and anomaly distances in ``branch/``."""
    rng = np.random.default_rng(seed)
    for fold in range(folds):
        rows, anomaly = [], []
        for i in range(60):
            name = f"MT_Free/exp1_num_{fold * 1000 + i * 400}.jpg"
            rows.append(
                {
                    "image": name,
                    "class": "MT_Free",
                    "group": f"MT_Free/{fold}_{i}",
                    "score": rng.uniform(0.01, 0.4),
                }
            )
            anomaly.append(
                {"image": name, "class": "MT_Free", "split": "test", "anomaly": rng.uniform(1.0, 2.0)}
            )
        for t in range(3):
            for view in range(2):
                name = f"MT_Break/exp{view + 1}_num_{fold * 1000 + t * 400 + view}.jpg"
                head, distance = (0.9, 1.5) if t == 0 else (0.2, 5.0) if t == 1 else (0.3, 1.2)
                rows.append(
                    {"image": name, "class": "MT_Break", "group": f"MT_Break/{fold}_{t}", "score": head}
                )
                anomaly.append({"image": name, "class": "MT_Break", "split": "test", "anomaly": distance})
        anomaly += [
            {"image": f"MT_Free/val_{fold}_{i}.jpg", "class": "MT_Free", "split": "val", "anomaly": a}
            for i, a in enumerate(rng.uniform(1.0, 2.0, 30))
        ]
        result = {"fold": fold, "rows": rows}
        if keep_reference:
            result["reference_scores"] = rng.uniform(0.01, 0.4, 30).tolist()
        for sub, payload in (("folds", result), ("branch", {"fold": fold, "rows": anomaly})):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"fold_{fold}.json").write_text(json.dumps(payload))
    return root


def test_one_run_reproduces_cv_decision(tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", seed=0)
    rows, reference = branch_rows(run / "folds", run / "branch", [0, 1])
    assert len(rows) == 132 and set(reference) == {0, 1}
    pooled = pooled_fusion([(rows, reference)], "MT_Free", group_gap=300, n_resamples=30)
    alone = compare(rows, reference, "MT_Free", group_gap=300, n_resamples=30)
    for name in ("head", "anomaly", "fused"):
        assert pooled[name]["recall_at_1pct_fa"] == alone[name]["recall_at_1pct_fa"]
    assert pooled["fused_minus_head"] == alone["gain_over_head"]["fused"]
    assert pooled["tiles"] == alone["tiles"] == 2 * (60 + 3)  # the two lightings of a tile are one tile


def test_runs_pool_their_rows_with_a_tile_per_run(tmp_path: Path) -> None:
    runs = [
        branch_rows(r / "folds", r / "branch", [0, 1])
        for r in (write_run(tmp_path / "a", 0), write_run(tmp_path / "b", 1))
    ]
    pooled = pooled_fusion(runs, "MT_Free", group_gap=300, n_resamples=30)
    assert pooled["runs"] == 2 and pooled["images"] == 264 and pooled["defective_images"] == 24
    assert pooled["tiles"] == 2 * 2 * 63
    assert len(pooled["per_run"]) == 2
    # the anomaly branch finds tile 1 (the head misses it), the head tile 0: fused finds both
    gain = pooled["fused_minus_head"]["recall_at_1pct_fa"]
    assert gain["after"] > gain["before"]


def test_rows_without_their_clean_reference_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    run = write_run(tmp_path / "old", seed=0, keep_reference=False)
    with pytest.raises(ValueError, match="keeps no clean validation scores"):
        branch_rows(run / "folds", run / "branch", [0, 1])
    (tmp_path / "params.yaml").write_text(
        "data: {free_class: MT_Free, split: {group_gap: 300}}\ncv: {k: 2, bootstrap: 20, seed: 0}\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["branch", "old", "--out", "out.json"])
    assert exit_info.value.code == 1
    assert "keeps no clean validation scores" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
    write_run(tmp_path / "new", seed=0)
    main(["branch", "new", "new", "--out", "out.json"])
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["runs"] == 2 and written["branch"] == "branch"
    # the same run twice: every per-run gain is the pooled one's
    assert written["per_run"][0] == written["per_run"][1]
