"""The README's generated tables: the committed README is exactly what `make docs` writes, and the
tables follow the result files they are generated from."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from mtdefect.docs_tables import main, render

ROOT = Path(__file__).resolve().parents[2]
SKELETON = (
    "intro\n<!-- BEGIN results -->\nstale\n<!-- END results -->\n"
    "cv\n<!-- BEGIN cv -->\n<!-- END cv -->\n"
    "middle\n<!-- BEGIN performance -->\n<!-- END performance -->\nend\n"
)


def test_committed_readme_is_what_make_docs_writes() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render(text, ROOT) == text, "README.md tables are stale: run `make docs` and commit README.md"


def metrics(dice: float, flips: str = "vertical") -> dict:
    return {
        "test": {
            "dice": dice,
            "iou": dice / 2,
            "dice_ungated": dice + 0.01,
            "per_class_dice": {"MT_Crack": dice / 4, "MT_Fray": dice * 1.2},
            "detection": {"recall": 0.25, "false_alarm_rate": 0.01, "auroc": 0.75},
            "test_time_flips": flips,
            "mean_class_dice": dice / 2,
            "score_source": "head",
            "classification": {"accuracy": 0.9},
        }
    }


def validation(dice: float, seconds: float = 600.0) -> dict:
    return {"val/dice": dice, "train/seconds": seconds}


def write_run(
    root: Path, dice: float, encoder_lock: str = "resnet18", encoder_params: str = "next_one"
) -> None:
    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics(dice)))
    (root / "reports" / "validation.json").write_text(json.dumps(validation(dice - 0.1)))
    model = {"arch": "Unet", "encoder": encoder_lock}
    lock = {"schema": "2.0", "stages": {"train": {"params": {"params.yaml": {"seed": 7, "model": model}}}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    (root / "params.yaml").write_text(
        yaml.safe_dump({"seed": 8, "model": {"arch": "Unet", "encoder": encoder_params}})
    )


def test_results_table_reads_the_run_and_names_the_model_dvc_lock_records(tmp_path: Path) -> None:
    write_run(tmp_path, 0.5)
    md = render(SKELETON, tmp_path)
    assert md.startswith("intro\n<!-- BEGIN results -->\n") and "stale" not in md and md.endswith("end\n")
    row = next(line for line in md.splitlines() if line.startswith("| **CPU default**"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # the model that produced the outputs (dvc.lock), not the next experiment's params.yaml
    assert cells[:2] == ["**CPU default** (`dvc exp run`), seed 7", "Unet resnet18 (vertical)"]
    assert cells[3:] == [
        "10.0 min",
        "0.400",
        "0.500 / 0.250",
        "0.510",
        "0.125",
        "0.600",
        "0.250",  # mean class Dice
        "head",  # the decision's score source
        "0.250",
        "0.010",
        "0.750",
        "0.900",  # defect-class top-1 accuracy
    ]
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "| Crack | Fray |" in header
    # a new result file changes the README
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(metrics(0.25)))
    assert render(md, tmp_path) != md


def test_seed_files_give_a_mean_and_sample_std_row(tmp_path: Path) -> None:
    write_run(tmp_path, 0.5)
    dices = [0.567, 0.397, 0.517]
    for seed, dice in zip((44, 42, 43), dices):
        (tmp_path / "reports" / "metrics.json").write_text(
            json.dumps(metrics(dice, "vertical" if seed < 44 else ""))
        )
        lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
        lock["stages"]["train"]["params"]["params.yaml"]["seed"] = seed
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
        assert (
            main(
                [
                    "--root",
                    str(tmp_path),
                    "--save-seed",
                    str(tmp_path / "reports" / "seeds" / f"s{seed}.json"),
                ]
            )
            == 0
        )
    saved = json.loads((tmp_path / "reports" / "seeds" / "s42.json").read_text())
    assert saved["seed"] == 42 and saved["params"]["model"]["encoder"] == "resnet18"
    md = render(SKELETON, tmp_path)
    row = next(line for line in md.splitlines() if "3 seeds" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "CPU default, **3 seeds (42, 43, 44): mean ± std**"
    assert cells[1] == "Unet resnet18 (none ×1, vertical ×2)"
    expected = f"{statistics.mean(dices):.3f} ± {statistics.stdev(dices):.3f}"
    assert cells[5].startswith(expected + " / "), (cells[5], expected)


def test_performance_rows_name_their_model_and_judge_the_target(tmp_path: Path) -> None:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    model = {
        "source": "x",
        "net": {"arch": "Unet", "encoder": "tf_efficientnet_lite0"},
        "test_time_flips": [],
    }

    def http(p50: float, p99: float, c8_per_s: float, errors: int = 0) -> dict:
        return {
            "machine": {"load_average_at_start": [0.5]},
            "model": model,
            "single_270x324": {"/detect": {"p50_ms": p50, "p99_ms": p99}},
            "levels": {
                "4": {"ratio_to_inprocess": 0.96},
                "8": {"req_per_s": c8_per_s, "errors": errors, "p99_ms": 150.0},
            },
        }

    (results / "bench_http_int8.json").write_text(json.dumps(http(28.0, 55.0, 52.0)))
    (results / "bench_http_fp32.json").write_text(json.dumps(http(41.0, 70.0, 30.0, errors=1)))
    (tmp_path / "reports").mkdir(exist_ok=True)
    parity = {
        "dice_delta": 0.001,
        "auroc_delta": 0.0005,
        "same_decision_rate": 1.0,
        "changed_decisions": 0,
        "tiles": 164,
        "holds": True,
    }
    int8 = {"parity": parity, "speed": {"load_average_before": [0.7]}, "model": model}
    (tmp_path / "reports" / "int8.json").write_text(json.dumps(int8))
    md = render(SKELETON, tmp_path)
    detect = next(line for line in md.splitlines() if "`/detect` end to end" in line)
    assert (
        "p50 28.0 ms, p99 55.0 ms · Unet tf_efficientnet_lite0 (no flips) · `bench_http_int8.json`" in detect
    )
    assert detect.endswith("| met in 1 of 2 runs |")
    c8 = next(line for line in md.splitlines() if "concurrency 8" in line)
    assert "52.0 tiles/s, 0 errors, p99 150 ms" in c8 and c8.endswith("| met in 1 of 2 runs |")
    keeps = next(line for line in md.splitlines() if "INT8 keeps the answers" in line)
    assert "`reports/int8.json` (load 0.7)" in keeps and keeps.endswith("| met |")
    gpu = next(line for line in md.splitlines() if "on a GPU" in line)
    assert gpu.endswith("| not measured (no result file) | open |")


def test_the_performance_doc_has_its_own_block_and_needs_no_readme_blocks(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "PERFORMANCE.md"
    doc.write_text("# P\n<!-- BEGIN lite0 -->\nstale\n<!-- END lite0 -->\n")
    assert main([str(doc)]) == 0
    assert "stale" not in doc.read_text() and "Generated by `make docs`" in doc.read_text()
    assert main([str(doc), "--check"]) == 0


def test_committed_performance_doc_is_what_make_docs_writes() -> None:
    text = (ROOT / "docs" / "PERFORMANCE.md").read_text(encoding="utf-8")
    assert render(text, ROOT, ()) == text, "docs/PERFORMANCE.md is stale: run `make docs` and commit it"


def test_committed_model_quality_doc_is_what_make_docs_writes() -> None:
    text = (ROOT / "docs" / "MODEL_QUALITY.md").read_text(encoding="utf-8")
    assert "<!-- BEGIN screen -->" in text
    assert render(text, ROOT, ()) == text, "docs/MODEL_QUALITY.md is stale: run `make docs` and commit it"


def screen_result(value: float, gain: float | None, score: bool) -> dict:
    def interval(v: float) -> dict:
        return {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}

    def variant(v: float, g: float | None) -> dict:
        entry = {
            "chosen_l2": [{"model": "m", "fold": k, "l2": 1e-3} for k in range(3)],
            "summary": {
                "recall_at_1pct_fa": interval(v),
                "tile_recall_at_1pct_fa": interval(v + 0.05),
                "auroc": interval(0.9),
            },
        }
        if g is not None:
            entry["gain_vs_config"] = {"recall_at_1pct_fa": interval(g)}
        return entry

    report = {
        "models": ["m"],
        "variants": {"config": variant(value, None), "mlp_64": variant(value + gain, gain)},
    }
    if score:
        report["defect_score"] = "P(defect) summed"
    return report


def test_screen_table_shows_every_committed_screen_and_its_score(tmp_path: Path) -> None:
    from mtdefect.docs_tables.screen import screen_table

    assert "No head-refit screen" in screen_table(tmp_path)
    (tmp_path / "reports" / "cv").mkdir(parents=True)
    for name, value, score in (("screen_old", 0.4, False), ("screen_new", 0.5, True)):
        (tmp_path / "reports" / "cv" / f"{name}.json").write_text(
            json.dumps(screen_result(value, 0.07, score))
        )
    rows = [line for line in screen_table(tmp_path).splitlines() if line.startswith("| `")]
    assert len(rows) == 4  # two screens, two variants each, in file-name order
    assert rows[0].startswith(
        "| `screen_new` | 3 | P(defect) summed, float64 | config | 0.500 [0.40, 0.60] | 0.550 | 0.900 |"
    )
    assert rows[1].endswith("| mlp_64 | 0.570 [0.47, 0.67] | 0.620 | 0.900 | +0.070 [-0.030, +0.170] |")
    assert "| 1 − P(free), float32, floor 1e-7 |" in rows[2]


@pytest.mark.parametrize(
    "text,message",
    [
        ("<!-- BEGIN results -->\n<!-- END results -->\n", r"missing \['cv', 'performance'\]"),
        (SKELETON + "<!-- BEGIN other -->\n<!-- END other -->\n", r"unknown \['other'\]"),
    ],
)
def test_markers_must_all_be_there_and_known(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(text, tmp_path)


def test_check_mode_reports_a_stale_readme_and_writes_nothing(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, 0.5)
    readme = tmp_path / "README.md"
    readme.write_text(SKELETON)
    assert main([str(readme), "--check"]) == 1
    assert readme.read_text() == SKELETON
    assert "make docs" in capsys.readouterr().err
    assert main([str(readme)]) == 0 and readme.read_text() != SKELETON
    assert main([str(readme), "--check"]) == 0


def test_cv_table_shows_each_recipe_with_intervals(tmp_path: Path) -> None:
    from mtdefect.docs_tables.cv import cv_table

    assert "No cross-validation run" in cv_table(tmp_path)
    entry = {"value": 0.71, "ci_low": 0.65, "ci_high": 0.77}
    summary = {
        "k": 5,
        "images": 1097,
        "groups": 227,
        "dice": entry,
        "per_class_dice": {"MT_Crack": {"value": 0.5, "ci_low": 0.3, "ci_high": 0.6}},
        "auroc": entry,
        "recall_at_1pct_fa": entry,
        "recall_at_decision": entry,
        "false_alarm_rate_at_decision": {"value": 0.05, "ci_low": 0.03, "ci_high": 0.08},
        "class_top1": {"value": None, "ci_low": None, "ci_high": None},
        "border_fp_share": entry,
        "clean_region_rate": {"value": 0.08, "ci_low": 0.05, "ci_high": 0.12},
        "recipe": {
            "encoder": "tf_efficientnet_lite0",
            "crop_size": 160,
            "preprocess_scale": 1.0,
            "preprocess_pad": "zero",
            "seed": 42,
        },
        "fold_seconds": [600, 600, 600, 600, 600],
    }
    (tmp_path / "reports" / "cv" / "cpu_2h").mkdir(parents=True)
    (tmp_path / "reports" / "cv" / "metrics.json").write_text(json.dumps(summary))
    rescored = {
        **summary["recipe"],
        "preprocess_pad": None,
        "paste_p": 0.3,
        "rescored_with": {"preprocess": {"pad": "zero"}, "calibration": {"max_region_rate": 0.05}},
    }
    partial = {**summary, "folds_pooled": [0, 1], "recipe": rescored}
    (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(json.dumps(partial))
    body = cv_table(tmp_path)
    lines = [line for line in body.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in lines] == ["default", "cpu_2h"]
    assert "0.710 [0.65, 0.77]" in lines[0] and "— / — / 0.50 / — / —" in lines[0] and "10 min" in lines[0]
    assert "| 5 / 1097 / 227 |" in lines[0] and "| 2 of 5 / 1097 / 227 |" in lines[1]
    assert "pad zero, mask gate at decision, paste 0, seed 42" in lines[0]  # summaries before paste_p
    assert "pad zero (trained with edge), mask gate ≤ 0.05 clean, paste 0.3, seed 42" in lines[1]
    assert "| 0.080 [0.05, 0.12] |" in lines[0]  # clean images showing regions
    photometric = {**summary["recipe"], "paste_p": 0.3, "gamma": 0.3, "illumination": 0.5}
    photometric["decision_criterion"] = "auroc"
    (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(
        json.dumps({**summary, "recipe": photometric})
    )
    line = [line for line in cv_table(tmp_path).splitlines() if line.startswith("| `cpu_2h`")][0]
    assert "paste 0.3, photometric gamma 0.3 / ramp 0.5, decision source by AUROC, seed 42" in line
    head_only = {**summary["recipe"], "rescored_with": {"calibration": {"score_windows": []}}}
    (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(
        json.dumps({**summary, "recipe": head_only})
    )
    line = [line for line in cv_table(tmp_path).splitlines() if line.startswith("| `cpu_2h`")][0]
    assert "paste 0, decision by the head only, seed 42" in line
    head_rule = {**summary["recipe"], "paste_p": 0.3, "decision_criterion": "head"}
    (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(
        json.dumps({**summary, "recipe": head_rule})
    )
    line = [line for line in cv_table(tmp_path).splitlines() if line.startswith("| `cpu_2h`")][0]
    assert "paste 0.3, decision by the head, seed 42" in line
    flips = {"calibration": {"test_time_flips": [["horizontal", "vertical"]]}}
    flipped = {**head_rule, "rescored_with": flips}
    (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(
        json.dumps({**summary, "recipe": flipped})
    )
    line = [line for line in cv_table(tmp_path).splitlines() if line.startswith("| `cpu_2h`")][0]
    assert "decision by the head, test-time flips horizontal+vertical, seed 42" in line
    ema = {**head_rule, "weight_averaging": {"decay": 0.995, "start_step": 600}, "seed": 43}
    (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(
        json.dumps({**summary, "recipe": ema})
    )
    line = [line for line in cv_table(tmp_path).splitlines() if line.startswith("| `cpu_2h`")][0]
    assert "decision by the head, EMA 0.995 from step 600, seed 43" in line
    # the head-refit rule: a run trained under it, and fold models rescored under a refit lever
    refit = {**head_rule, "head_refit": {"keep_current_head": False, "hard_negative_weight": 1.0}}
    rescored_refit = {**ema, "rescored_with": {"head_refit": {"hard_negative_weight": 4}}}
    for recipe, expected in (
        (refit, "decision by the head, head always refitted, seed 42"),
        (rescored_refit, "from step 600, hardest clean tiles ×4 in the refit, seed 43"),
        (ema, "from step 600, seed 43"),  # summaries before the options: nothing listed
    ):
        (tmp_path / "reports" / "cv" / "cpu_2h" / "metrics.json").write_text(
            json.dumps({**summary, "recipe": recipe})
        )
        line = [line for line in cv_table(tmp_path).splitlines() if line.startswith("| `cpu_2h`")][0]
        assert expected in line


def test_unseen_table_shows_each_class_left_out_against_the_target(tmp_path: Path) -> None:
    from mtdefect.docs_tables.unseen import unseen_table

    assert "No leave-one-class-out run" in unseen_table(tmp_path)

    def entry(recall: float) -> dict:
        return {
            "images": 40,
            "clean_images": 150,
            "tiles": 8,
            "clean_tiles": 27,
            "recall_at_1pct_fa": {"value": recall, "ci_low": recall - 0.1, "ci_high": recall + 0.1},
            "auroc": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95},
            "tile_recall_at_1pct_fa": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.8},
            "recall_at_decision": 0.3,
            "false_alarm_rate_at_decision": 0.02,
        }

    report = {
        "recipe": {"encoder": "tf_efficientnet_lite0", "crop_size": 160, "max_epochs": 30, "seed": 42},
        "max_false_alarm_rate": 0.01,
        "job_seconds": {"unseen_MT_Crack": 1800.0, "unseen_MT_Fray": 2400.0},
        "classes": {"MT_Fray": entry(0.75), "MT_Crack": entry(0.25)},
    }
    (tmp_path / "reports" / "cv").mkdir(parents=True)
    (tmp_path / "reports" / "cv" / "unseen.json").write_text(json.dumps(report))
    body = unseen_table(tmp_path)
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| class")]
    assert [r.split(" | ")[0] for r in rows] == ["| Crack", "| Fray"]
    assert "| 0.250 [0.15, 0.35] |" in rows[0] and rows[0].endswith("| missed |")
    assert "| 0.750 [0.65, 0.85] |" in rows[1] and rows[1].endswith("| met |")
    assert "| 40 (8 tiles) | 150 (27 tiles) |" in rows[0] and "| 0.300 @ 0.020 |" in rows[0]
    assert "recall @ ≤ 1% FA" in body and "2 trainings, 30–40 min each" in body
    assert "30 epochs, paste 0, seed 42" in body  # a run from before the recipe recorded paste_p
    report["recipe"]["paste_p"] = 0.3
    (tmp_path / "reports" / "cv" / "unseen.json").write_text(json.dumps(report))
    assert "30 epochs, paste 0.3, seed 42" in unseen_table(tmp_path)
    readme = "x\n<!-- BEGIN unseen -->\nstale\n<!-- END unseen -->\n"
    assert "| Fray |" in render(readme, tmp_path, required=())
