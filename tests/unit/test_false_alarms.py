"""The false-alarm audit (mtdefect.cv.false_alarms) on rows whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtdefect.cv.false_alarms import audit, by_lighting, head_z_rows, main


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
    # the odd tile's two brightest views (lightings 1 and 2) are the two rejected photographs
    lights = {entry["lighting"]: entry for entry in summary["by_lighting"]}
    assert sorted(lights) == [1, 2, 3, 4, 5]
    assert [lights[k]["clean_rejected"] for k in range(1, 6)] == [1, 1, 0, 0, 0]
    assert all(lights[k]["clean_images"] == 40 for k in range(1, 6))
    assert lights[1]["defective_images"] == 40 and lights[1]["recall"] == pytest.approx(0.0)
    assert lights[2]["defective_images"] == 0 and lights[2]["recall"] is None


def test_by_lighting_shows_which_light_spends_the_budget_and_finds_defects() -> None:
    images = [f"MT_Free/exp{k}_num_{i}.jpg" for k in (1, 2) for i in range(4)] + [
        "MT_Crack/exp1_num_90.jpg",
        "MT_Crack/exp2_num_91.jpg",
        "MT_Crack/odd_name.jpg",
    ]
    z = np.array([0.0, 0.1, 0.2, 0.3, 5.0, 6.0, 0.4, 0.5, 7.0, 1.0, 8.0])
    defective = np.array([False] * 8 + [True] * 3)
    table = by_lighting(z, defective, images, threshold=4.0)
    assert [t["lighting"] for t in table] == [1, 2, None]
    one, two, unnamed = table
    assert (one["clean_images"], one["clean_rejected"], one["recall"]) == (4, 0, 1.0)
    assert (two["clean_images"], two["clean_rejected"], two["recall"]) == (4, 2, 0.0)
    assert two["clean_max_z"] == 6.0 and two["clean_median_z"] == pytest.approx(2.75)
    assert unnamed["clean_images"] == 0 and unnamed["clean_median_z"] is None and unnamed["recall"] == 1.0


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
