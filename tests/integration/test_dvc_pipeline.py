"""The real `dvc exp run` in a temporary git repo on a small subset of the shared archive."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import CLASSES, SHARED_ZIP, requires_dataset
from tests.integration.dvc_repo import dvc, env, make_repo

pytestmark = [pytest.mark.slow, requires_dataset]
SMALL = ["-S", "debug=fast", "-S", "data.split.max_per_class=4"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("dvcrepo") / "project")
    environment = env(repo / ".bentoml", SHARED_ZIP)
    first = dvc(repo, environment, "exp", "run", *SMALL)
    return repo, environment, first


def test_metrics_are_present_and_sane(pipeline) -> None:
    repo, _, first = pipeline
    for stage in ("freeze", "load_data", "split", "train", "evaluate", "export", "package"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    test = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    assert 0.0 <= test["dice"] <= 1.0 and 0.0 <= test["iou"] <= test["dice"] + 1e-9
    assert set(test["per_class_dice"]) == {"MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"}
    # 4 images per class, grouped by tile: every class in test, a class's test tile may hold two
    rows = (repo / "data" / "split.csv").read_text().splitlines()[1:]
    test_rows = [row.split(",") for row in rows if row.split(",")[3] == "test"]
    assert {row[2] for row in test_rows} == set(CLASSES)
    assert test["images"] == len(test_rows) >= 6
    params = (repo / "params.yaml").read_text()
    assert str(SHARED_ZIP) in params, "the data source used must land in params.yaml"
    assert (repo / "models" / "segmenter" / "weights.safetensors").exists()
    parity = json.loads((repo / "models" / "onnx" / "parity.json").read_text())
    assert parity["max_abs_prob_delta"] < 1e-4 and parity["mismatched_pixels_off_threshold"] == 0
    assert list((repo / "reports" / "overlays").glob("*.png"))
    tag = json.loads((repo / "reports" / "package.json").read_text())["tag"]
    assert tag.startswith("magnetic-tile-segmenter:")


def test_exp_show_lists_the_metric(pipeline) -> None:
    repo, environment, _ = pipeline
    shown = json.loads(dvc(repo, environment, "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "reports/metrics.json" in text and '"dice"' in text
    encoder = yaml.safe_load((repo / "params.yaml").read_text())["model"]["encoder"]
    assert "model" in text and f'"encoder": "{encoder}"' in text
    assert "reports/validation.json" in text and '"val/recall"' in text  # what experiments are chosen by


def test_second_run_reruns_nothing_and_status_is_clean(pipeline) -> None:
    repo, environment, _ = pipeline
    second = dvc(repo, environment, "exp", "run", *SMALL)
    assert "Running stage 'train'" not in second.stdout
    assert "Stage 'train' didn't change, skipping" in second.stdout
    # the environment freeze is always_changed by design; every other stage and output is clean
    status = json.loads(dvc(repo, environment, "status", "--json").stdout)
    assert status == {"freeze": ["always changed"]}, status


def test_changed_param_reruns_training(pipeline) -> None:
    repo, environment, _ = pipeline
    third = dvc(repo, environment, "exp", "run", *SMALL, "-S", "model.lr=0.0005")  # the default is 1e-3
    assert "Running stage 'train'" in third.stdout
    assert "Stage 'load_data' didn't change, skipping" in third.stdout
