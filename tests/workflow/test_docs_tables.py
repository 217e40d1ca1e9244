"""The README's generated tables: the committed README is exactly what `make docs` writes, and the
tables follow the result files they are generated from."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from mtdefect import docs_tables
from mtdefect.docs_tables import main, render

ROOT = Path(__file__).resolve().parents[2]
SKELETON = (
    "intro\n<!-- BEGIN results -->\nstale\n<!-- END results -->\n"
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
        "0.250",
        "0.010",
        "0.750",
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
    http = {
        "machine": {"load_average_at_start": [0.5]},
        "model": {
            "source": "x",
            "net": {"arch": "Unet", "encoder": "tf_efficientnet_lite0"},
            "test_time_flips": ["vertical"],
        },
        "single_270x324": {"/detect": {"p50_ms": 58.0}},
        "levels": {"4": {"ratio_to_inprocess": 0.95}, "16": {"errors": 2}},
        "rss": {
            "growth_100_to_end": 0.05,
            "samples": [{"requests": 1500, "total_mib": 100.0}, {"requests": 2500, "total_mib": 101.0}],
        },
    }
    (results / "bench_http.json").write_text(json.dumps(http))
    old = dict(
        http, model={"source": "models/segmenter", "tag": "t"}, single_270x324={"/detect": {"p50_ms": 70.0}}
    )
    (results / "bench_http_rerun.json").write_text(json.dumps(old))
    md = render(SKELETON, tmp_path)
    detect = next(line for line in md.splitlines() if "`/detect` p50" in line)
    assert "58.0 ms · Unet tf_efficientnet_lite0 (vertical) · `bench_http.json` (load 0.5)" in detect
    assert f"70.0 ms · Unet {docs_tables.UNRECORDED}† · `bench_http_rerun.json`" in detect
    assert detect.endswith("| met in 1 of 2 runs |")
    errors = next(line for line in md.splitlines() if "zero errors" in line)
    assert errors.endswith("| missed in all 2 runs |")
    rss = next(line for line in md.splitlines() if "RSS growth" in line)
    assert "+5.0 % (1.0 KiB/request)" in rss
    gpu = next(line for line in md.splitlines() if "on a GPU" in line)
    assert gpu.endswith("| not measured (no result file) | open |")


@pytest.mark.parametrize(
    "text,message",
    [
        ("<!-- BEGIN results -->\n<!-- END results -->\n", r"missing \['performance'\]"),
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
