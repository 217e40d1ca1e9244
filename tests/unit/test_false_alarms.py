"""The false-alarm audit (mtdefect.cv.false_alarms) on rows whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtdefect.cv.false_alarms import audit, head_z_rows, main


def fold_result(fold: int, rng: np.random.Generator, odd_tile: bool) -> dict:
    """100 clean photographs (20 tiles × 5 lightings) and 20 defective ones; in fold 0 one clean
    tile scores above every defect under all its lightings."""
    rows = []
    for tile in range(20):
        for light in range(1, 6):
            score = 0.999 - light * 1e-4 if odd_tile and tile == 0 else float(rng.uniform(0.01, 0.2))
            rows.append(
                {
                    "image": f"MT_Free/exp{light}_num_{fold * 10000 + tile * 100 + light}.jpg",
                    "class": "MT_Free",
                    "group": f"MT_Free/{fold}.{tile}",
                    "score": score,
                }
            )
    for i in range(20):
        rows.append(
            {
                "image": f"MT_Crack/exp1_num_{fold * 10000 + 5000 + i * 100}.jpg",
                "class": "MT_Crack",
                "group": f"MT_Crack/{fold}.{i}",
                "score": 0.9 if i % 2 == 0 else 0.1,
            }
        )
    return {"fold": fold, "rows": rows, "reference_scores": rng.uniform(0.01, 0.2, 50).tolist()}


def test_the_audit_names_the_tile_that_spends_the_budget_and_what_it_costs() -> None:
    rng = np.random.default_rng(0)
    results = [fold_result(0, rng, odd_tile=True), fold_result(1, rng, odd_tile=False)]
    rows = head_z_rows(results)
    assert len(rows) == 240 and all(r["fold"] in (0, 1) for r in rows)
    summary = audit(rows, "MT_Free", group_gap=300)
    # 200 clean photographs: two may be rejected, and the odd tile's five views outrank every defect
    assert summary["clean_images"] == 200 and summary["rejected_clean_images"] == 2
    top = summary["highest_clean_photographs"][:5]
    assert {p["fold"] for p in top} == {0} and len({p["tile"] for p in top}) == 1
    assert summary["recall_at_1pct_fa"] == pytest.approx(0.0)
    without = summary["without_top_tiles"]
    assert without[0]["left_out"] == [] and without[1]["left_out"] == [top[0]["tile"]]
    assert without[1]["recall_at_1pct_fa"] == pytest.approx(0.5)  # the even defects, once it is gone


def test_scores_are_put_on_each_fold_clean_validation_scale() -> None:
    """The same raw score is an alarm in a fold whose clean tiles score low, and not in one whose
    clean tiles score high."""
    rows = [{"image": "MT_Free/a.jpg", "class": "MT_Free", "group": "g", "score": 0.5}]
    low = head_z_rows([{"fold": 0, "rows": rows, "reference_scores": [0.01, 0.02, 0.03]}])
    high = head_z_rows([{"fold": 1, "rows": rows, "reference_scores": [0.6, 0.7, 0.8]}])
    assert low[0]["z"] > 3 > 0 > high[0]["z"]


def test_cli_writes_the_audit_and_fails_in_one_line_without_rows(tmp_path, capsys, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    rows_dir = tmp_path / "folds"
    rows_dir.mkdir()
    for fold in (0, 1):
        (rows_dir / f"fold_{fold}.json").write_text(json.dumps(fold_result(fold, rng, fold == 0)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "data:\n  free_class: MT_Free\n  split:\n    group_gap: 300\n"
        "cv:\n  rows_dir: folds\n  reports_dir: out\n"
    )
    main([])
    summary = json.loads((tmp_path / "out" / "false_alarms.json").read_text())
    assert summary["rejected_clean_images"] == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing"), str(tmp_path / "x.json")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "no fold_<i>.json rows" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
