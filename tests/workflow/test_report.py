"""The report builder on hand-made evaluate outputs (no model, no dataset)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from mtdefect.fileio import dumps_strict
from mtdefect.report import average_precision, build_report, figures, fmt, read_tsv, render_markdown
from mtdefect.report.data import confusion_counts, load_inputs

METRICS = {
    "test": {
        "dice": 0.61234,
        "iou": 0.44123,
        "detection": {
            "recall": 0.9,
            "false_alarm_rate": 0.05,
            "auroc": 0.875,
            "n_defective": 10,
            "n_free": 20,
        },
        "per_class_dice": {"MT_Blowhole": 0.7, "MT_Crack": float("nan")},
        "free_clean_rate": 0.95,
        "images": 30,
        "threshold": 0.6,
        "min_region_area": 16,
    }
}
PR = [
    {"recall": 0.5, "precision": 1.0, "threshold": 0.9},
    {"recall": 1.0, "precision": 0.5, "threshold": 0.2},
]
ROC = [
    {"fpr": 0.0, "tpr": 0.0, "threshold": 1.0},
    {"fpr": 0.0, "tpr": 0.5, "threshold": 0.9},
    {"fpr": 1.0, "tpr": 1.0, "threshold": 0.2},
]
PER_IMAGE = [
    {"image": "MT_Blowhole/b1.jpg", "class": "MT_Blowhole", "dice": 0.1, "score": 0.91, "defective": True},
    {"image": "MT_Blowhole/b2.jpg", "class": "MT_Blowhole", "dice": 0.9, "score": 0.95, "defective": True},
    {"image": "MT_Crack/c1.jpg", "class": "MT_Crack", "dice": 0.0, "score": 0.1, "defective": False},
    {"image": "MT_Free/f1.jpg", "class": "MT_Free", "dice": 0.0, "score": 0.7, "defective": True},
]


def write_inputs(reports: Path, wide: int = 300) -> Path:
    (reports / "plots").mkdir(parents=True)
    (reports / "metrics.json").write_text(dumps_strict(METRICS))  # NaN written as null, like evaluate does
    (reports / "plots" / "pr.json").write_text(json.dumps(PR))
    (reports / "plots" / "roc.json").write_text(json.dumps(ROC))
    (reports / "plots" / "per_class_dice.json").write_text(
        dumps_strict([{"class": k, "dice": v} for k, v in METRICS["test"]["per_class_dice"].items()])
    )
    (reports / "plots" / "per_image.json").write_text(json.dumps(PER_IMAGE))
    overlays = reports / "overlays"
    overlays.mkdir()
    rng = np.random.default_rng(0)
    for name in ("worst_00_c1", "worst_01_f1", "worst_02_b1", "sample_000_b2"):
        Image.fromarray(rng.integers(0, 255, (40, wide, 3), dtype=np.uint8)).save(overlays / f"{name}.png")
    return reports


def linked_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_has_tables_curves_and_worst_panels(tmp_path) -> None:
    reports = write_inputs(tmp_path / "reports")
    out = build_report(
        reports,
        reports / "report.md",
        reports / "report_assets",
        worst_n=2,
        params={"model.encoder": "resnet34", "model.lr": 0.001},
    )
    md = out.read_text()
    assert "| Dice (pooled pixels) | 0.612 |" in md
    assert "| IoU (pooled pixels) | 0.441 |" in md
    assert "| Detection recall (10 defective tiles) | 0.900 |" in md
    assert "| False-alarm rate (20 defect-free tiles) | 0.050 |" in md
    assert "| Detection AUROC | 0.875 |" in md
    assert "| Detection average precision | 0.750 |" in md  # 0.5·1.0 + 0.5·0.5
    assert "`model.encoder` = resnet34" in md and "threshold 0.60, min region 16 px" in md
    # per class: pooled Dice from metrics.json, image counts and mean image Dice from per_image.json
    assert "| Blowhole | 2 | 0.700 | 0.500 |" in md
    assert "| Crack | 1 | n/a | 0.000 |" in md
    assert "| Free | 1 | clean 0.950 | – |" in md
    # worst-N: the first N by rank, captions from per_image.json; samples are not included
    assert "## Worst 2 test predictions" in md
    assert "1. `MT_Crack/c1.jpg` — Dice 0.000, score 0.10, missed" in md
    assert "2. `MT_Free/f1.jpg` — defect-free tile, false alarm (score 0.70)" in md
    assert "b1" not in md.split("## Worst")[1] and "sample_" not in md
    links = linked_images(md)
    assert links == [
        "report_assets/per_class_dice.png",
        "report_assets/pr.png",
        "report_assets/roc.png",
        "report_assets/worst_00_c1.png",
        "report_assets/worst_01_f1.png",
    ]
    for link in links:
        with Image.open(reports / link) as picture:
            assert picture.width > 100 and picture.height > 30
    assert sorted(p.name for p in (reports / "report_assets").iterdir()) == sorted(
        Path(x).name for x in links
    )


def test_wide_panels_are_scaled_down_and_assets_replaced(tmp_path) -> None:
    reports = write_inputs(tmp_path / "reports", wide=2000)
    assets = reports / "report_assets"
    assets.mkdir()
    (assets / "stale.png").write_bytes(b"old")
    build_report(reports, reports / "report.md", assets, worst_n=1, max_image_width=500)
    with Image.open(assets / "worst_00_c1.png") as picture:
        assert picture.size == (500, 10)
    assert not (assets / "stale.png").exists(), "the assets folder is rebuilt, not merged"
    assert not [p for p in reports.iterdir() if p.name.startswith(".")], "no staging leftovers"


def test_links_are_relative_to_the_markdown_file(tmp_path) -> None:
    reports = write_inputs(tmp_path / "reports")
    md_path = tmp_path / "comment" / "pr.md"
    build_report(reports, md_path, tmp_path / "assets", worst_n=1)
    links = linked_images(md_path.read_text())
    assert links and all(link.startswith("../assets/") for link in links)
    assert all((md_path.parent / link).exists() for link in links)  # how CML resolves them


def test_missing_optional_inputs_still_give_a_report(tmp_path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "metrics.json").write_text(json.dumps(METRICS))
    md = build_report(reports, reports / "report.md", reports / "report_assets").read_text()
    assert "## Test metrics" in md and "## Worst" not in md and "![" not in md


def test_missing_metrics_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluate stage"):
        build_report(tmp_path, tmp_path / "report.md", tmp_path / "assets")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="'test'"):
        build_report(tmp_path, tmp_path / "report.md", tmp_path / "assets")
    assert not (tmp_path / "report.md").exists()


def test_stage_reads_params_and_writes_into_reports_dir(tmp_path, monkeypatch) -> None:
    from mtdefect.stages.report import stage

    write_inputs(tmp_path / "out")
    cfg = OmegaConf.create(
        {
            "paths": {"reports_dir": str(tmp_path / "out")},
            "evaluate": {"worst": 1},
            "model": {"arch": "Unet", "encoder": "resnet10t", "lr": 0.002},
            "trainer": {"max_epochs": 45},
        }
    )
    stage(cfg)
    md = (tmp_path / "out" / "report.md").read_text()
    assert (
        "`model.arch` = Unet · `model.encoder` = resnet10t · `model.lr` = 0.002 · `trainer.max_epochs` = 45"
        in md
    )
    assert "data.module.crop_size" not in md  # missing params are skipped
    assert len(list((tmp_path / "out" / "report_assets").glob("worst_*.png"))) == 1


def test_average_precision_and_formatting() -> None:
    assert average_precision([]) == 0.0
    assert average_precision(PR) == pytest.approx(0.75)
    assert average_precision(list(reversed(PR))) == pytest.approx(0.75)
    assert average_precision([{"recall": 1.0, "precision": 1.0}]) == pytest.approx(1.0)
    assert fmt(float("nan")) == "n/a" and fmt(None) == "n/a" and fmt(3) == "3" and fmt(0.12345) == "0.123"


def _line(figure, gid: str):
    (axes,) = figure.axes
    (line,) = [artist for artist in axes.get_lines() if artist.get_gid() == gid]
    return line


def test_pr_and_roc_figures_plot_the_points_sorted_with_chance_and_the_summary_in_the_legend() -> None:
    pr = figures.pr_curve(list(reversed(PR)), ap=0.75, chance=1 / 3)
    detector = _line(pr, "detector")
    assert list(detector.get_xdata()) == [0.5, 1.0] and list(detector.get_ydata()) == [1.0, 0.5]
    assert list(_line(pr, "chance").get_ydata()) == pytest.approx([1 / 3, 1 / 3])
    legend = [text.get_text() for text in pr.axes[0].get_legend().get_texts()]
    assert legend == ["detector (AP 0.750)", "chance (0.33)"]
    assert pr.axes[0].get_xlim() == pytest.approx((0.0, 1.02))
    assert [line.get_gid() for line in figures.pr_curve(PR, ap=0.75).axes[0].get_lines()] == ["detector"]

    roc = figures.roc_curve(list(reversed(ROC)), auroc=0.875)
    assert list(_line(roc, "detector").get_xdata()) == [0.0, 0.0, 1.0]
    assert list(_line(roc, "detector").get_ydata()) == [0.0, 0.5, 1.0]
    assert list(_line(roc, "chance").get_xdata()) == [0, 1]
    assert roc.axes[0].get_legend().get_texts()[0].get_text() == "detector (AUROC 0.875)"


def test_per_class_figure_draws_a_bar_per_class_and_says_n_a_for_a_missing_dice() -> None:
    rows = [
        {"class": "MT_Blowhole", "dice": 0.7},
        {"class": "MT_Crack", "dice": float("nan")},
        {"class": "MT_Fray", "dice": None},
    ]
    (axes,) = figures.per_class_dice(rows).axes
    widths = [patch.get_width() for patch in axes.patches]
    assert widths == pytest.approx([0.7, 0.0, 0.0])
    assert [label.get_text() for label in axes.get_yticklabels()] == ["Blowhole", "Crack", "Fray"]
    assert [text.get_text() for text in axes.texts] == ["0.700", "n/a", "n/a"]
    assert axes.yaxis_inverted(), "the first class is on top"


def test_confusion_counts_and_figure() -> None:
    rows = [
        {"actual": "MT_Crack", "predicted": "MT_Crack"},
        {"actual": "MT_Crack", "predicted": "MT_Free"},
        {"actual": "MT_Free", "predicted": "MT_Free"},
        {"actual": "MT_Free", "predicted": "MT_Free"},
        {"actual": "MT_Free", "predicted": "MT_Blowhole"},
    ]
    classes, counts = confusion_counts(rows)
    assert classes == ["MT_Blowhole", "MT_Crack", "MT_Free"], "a class only ever predicted still gets a row"
    assert counts == [[0, 0, 0], [0, 1, 1], [1, 0, 2]]
    figure = figures.confusion_matrix(classes, counts)
    axes = figure.axes[0]
    assert axes.images[0].get_array().tolist() == counts
    assert [t.get_text() for t in axes.texts] == [str(v) for row in counts for v in row]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["Blowhole", "Crack", "Free"]
    assert axes.get_xlabel() == "predicted" and axes.get_ylabel() == "actual"


def test_confusion_rows_add_a_figure_and_a_section_to_the_report(tmp_path) -> None:
    reports = write_inputs(tmp_path / "reports")
    rows = [{"actual": "MT_Crack", "predicted": "MT_Crack"}, {"actual": "MT_Free", "predicted": "MT_Crack"}]
    (reports / "plots" / "confusion.json").write_text(json.dumps(rows))
    assert load_inputs(reports).confusion == rows
    md = build_report(reports, reports / "report.md", reports / "report_assets", worst_n=0).read_text()
    assert "## Tile class (test)" in md and "1 of 2 test tiles given their actual class (0.500)." in md
    assert "report_assets/confusion.png" in linked_images(md)
    with Image.open(reports / "report_assets" / "confusion.png") as picture:
        assert picture.width > 200 and picture.height > 200


def test_pngs_are_identical_run_to_run(tmp_path) -> None:
    reports = write_inputs(tmp_path / "reports")
    first = build_report(reports, tmp_path / "a" / "r.md", tmp_path / "a" / "assets")
    second = build_report(reports, tmp_path / "b" / "r.md", tmp_path / "b" / "assets")
    assert first.read_text().replace("../a/", "") == second.read_text().replace("../b/", "")
    for png in sorted((tmp_path / "a" / "assets").glob("*.png")):
        assert png.read_bytes() == (tmp_path / "b" / "assets" / png.name).read_bytes(), png.name


def test_training_curves(tmp_path) -> None:
    live = tmp_path / "dvclive" / "plots" / "metrics"
    (live / "train").mkdir(parents=True)
    (live / "val").mkdir()
    (live / "train" / "loss.tsv").write_text("step\tloss\n1\t1.5\n2\t1.0\n3\t0.7\n")
    (live / "val" / "dice.tsv").write_text("step\tdice\n1\t0.2\n3\t0.4\n")
    assert read_tsv(live / "val" / "dice.tsv") == ([1.0, 3.0], [0.2, 0.4])
    figure = figures.training_curves(tmp_path / "dvclive")
    assert [line.get_gid() for line in figure.axes[0].get_lines()] == ["train loss", "val Dice"]
    assert list(_line(figure, "train loss").get_ydata()) == [1.5, 1.0, 0.7]
    out = figures.save_png(figure, tmp_path / "curves.png")
    with Image.open(out) as picture:
        assert picture.size == (560, 380)
    with pytest.raises(FileNotFoundError):
        figures.training_curves(tmp_path / "nothing")


def test_render_markdown_without_assets() -> None:
    md = render_markdown({"test": {"dice": math.nan}}, [], {}, [])
    assert "| Dice (pooled pixels) | n/a |" in md and md.endswith("\n")
