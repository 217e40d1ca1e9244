"""`dvc plots show` / `dvc plots diff` render every plot the project defines, from hand-made stage outputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.workflow.conftest import ROOT, run, tool_env

TOP_LEVEL = [
    next(iter(p)) if isinstance(p, dict) else p
    for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
]


def write_outputs(repo: Path, scale: float) -> None:
    """What the train and evaluate stages write, with values scaled so two revisions differ."""
    metrics = repo / "dvclive" / "plots" / "metrics"
    for name, field, values in (
        ("train/loss.tsv", "loss", [1.2, 0.8, 0.5]),
        ("val/loss.tsv", "loss", [1.0, 0.7, 0.6]),
        ("val/dice.tsv", "dice", [0.2, 0.4, 0.5]),
        ("val/iou.tsv", "iou", [0.1, 0.25, 0.33]),
        ("lr-AdamW.tsv", "lr-AdamW", [1e-3, 5e-4, 1e-4]),
        ("epoch.tsv", "epoch", [0, 1, 2]),
    ):
        (metrics / name).parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{step}\t{v * scale}\n" for step, v in zip((2, 4, 6), values))
        (metrics / name).write_text(f"step\t{field}\n{rows}")
    plots = repo / "reports" / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    (plots / "roc.json").write_text(
        json.dumps(
            [
                {"fpr": 0.0, "tpr": 0.0, "threshold": 1.0},
                {"fpr": 0.1, "tpr": 0.7 * scale, "threshold": 0.6},
                {"fpr": 1.0, "tpr": 1.0, "threshold": 0.1},
            ]
        )
    )
    (plots / "pr.json").write_text(
        json.dumps(
            [
                {"recall": 0.5, "precision": 1.0, "threshold": 0.9},
                {"recall": 1.0, "precision": 0.6 * scale, "threshold": 0.2},
            ]
        )
    )
    (plots / "per_class_dice.json").write_text(
        json.dumps([{"class": c, "dice": d * scale} for c, d in (("MT_Blowhole", 0.6), ("MT_Crack", 0.3))])
    )
    # the defect-class confusion: one row per tile (the second revision moves one crack to "MT_Free")
    confusion = [
        ("MT_Crack", "MT_Crack"),
        ("MT_Free", "MT_Free"),
        ("MT_Crack", "MT_Crack" if scale == 1.0 else "MT_Free"),
    ]
    (plots / "confusion.json").write_text(json.dumps([{"actual": a, "predicted": p} for a, p in confusion]))
    (plots / "per_image.json").write_text(
        json.dumps(
            [
                {
                    "image": "MT_Crack/a.jpg",
                    "class": "MT_Crack",
                    "dice": 0.3 * scale,
                    "score": 0.8,
                    "defective": True,
                },
                {"image": "MT_Free/b.jpg", "class": "MT_Free", "dice": 0.0, "score": 0.2, "defective": False},
            ]
        )
    )
    (repo / "reports" / "metrics.json").write_text(json.dumps({"test": {"dice": 0.5 * scale}}))
    (repo / "dvclive" / "metrics.json").write_text(json.dumps({"val": {"dice": 0.5 * scale}}))
    overlays = repo / "reports" / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    for name in ("sample_000_a", "worst_00_a"):
        Image.fromarray(np.full((8, 20, 3), int(100 * scale), dtype=np.uint8)).save(overlays / f"{name}.png")


@pytest.fixture
def plots_repo(tmp_path):
    repo = tmp_path / "project"
    (repo / ".dvc").mkdir(parents=True)
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    env = tool_env(tmp_path)
    write_outputs(repo, 1.0)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "baseline outputs"]):
        run(["git", *args], repo, env)
    return repo, env


def vega_revisions(entry: list[dict]) -> set[str]:
    return {point["rev"] for point in entry[0]["content"]["data"]["values"]}


def test_plots_show_renders_every_defined_plot(plots_repo, tmp_path) -> None:
    repo, env = plots_repo
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, env).stdout)["data"]
    for title in TOP_LEVEL:
        assert title in shown, (title, sorted(shown))
        assert shown[title][0]["type"] == "vega"
        assert shown[title][0]["content"]["data"]["values"], f"{title} has no data points"
    # two files on one chart: both sources are there
    sources = {p.get("filename") for p in shown["Loss (train vs validation)"][0]["content"]["data"]["values"]}
    assert {"train/loss.tsv", "val/loss.tsv"} <= sources  # DVC trims the common prefix
    for image in ("reports/overlays/sample_000_a.png", "reports/overlays/worst_00_a.png"):
        assert shown[image][0]["type"] == "image" and len(shown[image]) == 1, "each overlay once"
    for name in ("roc", "pr", "per_class_dice", "per_image", "confusion"):  # by their definitions only, once
        assert f"reports/plots/{name}.json" not in shown, sorted(shown)

    out = tmp_path / "html"
    run(["dvc", "plots", "show", "-o", str(out)], repo, env)
    html = (out / "index.html").read_text()
    for title in TOP_LEVEL:
        assert f'"text": "{title}"' in html, title
    images = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(images) == 2 and all((out / src).exists() for src in images)


def test_plots_diff_overlays_two_revisions(plots_repo) -> None:
    repo, env = plots_repo
    write_outputs(repo, 0.5)  # the workspace now differs from HEAD
    shown = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo, env).stdout)["data"]
    for title in TOP_LEVEL:
        assert vega_revisions(shown[title]) == {"HEAD", "workspace"}, title
    assert {e["revisions"][0] for e in shown["reports/overlays/worst_00_a.png"]} == {"HEAD", "workspace"}
