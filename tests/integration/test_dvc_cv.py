"""Cross-validation as its own DVC pipeline (cv/dvc.yaml) in a temporary git repo, on a small
subset of the shared archive."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CLASSES, SHARED_ZIP, requires_dataset
from tests.integration.dvc_repo import dvc, env, make_repo

pytestmark = [pytest.mark.slow, requires_dataset]
SMALL = ["-S", "debug=fast", "-S", "data.split.max_per_class=4"]


def test_cross_validation_is_its_own_pipeline(tmp_path) -> None:
    """`dvc exp run cv/dvc.yaml:cv` (upstream stages included): every image held out once, the
    summary in `dvc exp show`, curves in `dvc plots`, and a second run reruns nothing."""
    repo = make_repo(tmp_path / "project", cross_validation=True)
    environment = env(repo / ".bentoml", SHARED_ZIP)
    cv = [*SMALL, "-S", "cv.k=2", "-S", "cv.bootstrap=20", "-S", "head_refit.enabled=false"]
    first = dvc(repo, environment, "exp", "run", "cv/dvc.yaml:cv", *cv)
    assert "Running stage 'cv/dvc.yaml:cv'" in first.stdout
    summary = json.loads((repo / "reports" / "cv" / "metrics.json").read_text())
    manifests = [(repo / "data" / "cv" / f"fold_{f}.csv").read_text().splitlines()[1:] for f in (0, 1)]
    held_out = [row.split(",")[0] for rows in manifests for row in rows if row.split(",")[3] == "test"]
    assert len(held_out) == len(set(held_out)) == len(manifests[0]) == 4 * len(CLASSES) == summary["images"]
    assert summary["k"] == 2 and 0.0 <= summary["dice"]["value"] <= 1.0
    shown = json.dumps(json.loads(dvc(repo, environment, "exp", "show", "--json").stdout))
    assert "reports/cv/metrics.json" in shown and '"recall_at_1pct_fa"' in shown
    plots = dvc(repo, environment, "plots", "show", "--json").stdout
    assert "reports/cv/plots/roc.json" in plots
    second = dvc(repo, environment, "exp", "run", "cv/dvc.yaml:cv", *cv)
    assert "Running stage 'cv/dvc.yaml:cv'" not in second.stdout
