"""A 2-point DVC experiment queue in a throwaway repo, then `dvc exp show` and `dvc plots diff` across it.

Queued experiments run in temporary copies of the repo (.dvc/tmp/exps/...), so MT_DATA_SOURCE is absolute.
The queue targets the `report` stage: freeze → load_data → split → train → evaluate → report
(export and package are left out to keep the test short; tests/integration runs the whole pipeline).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.workflow.conftest import make_dvc_repo, run, tool_env

pytestmark = pytest.mark.slow
QUEUE_WAIT_S = 480


def dvc(repo: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(["dvc", *args], repo, env, timeout=timeout)


def experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` → {experiment name: its rev record}."""
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev.get("name") or rev["rev"]] = rev
    return found


@pytest.fixture(scope="module")
def queued(tmp_path_factory, tiny_source):
    tmp = tmp_path_factory.mktemp("queue")
    env = tool_env(tmp, MT_DATA_SOURCE=str(tiny_source))
    repo = make_dvc_repo(tmp / "project", env)
    dvc(
        repo,
        env,
        "exp",
        "run",
        "--queue",
        "-S",
        "model.lr=1e-3,3e-4",
        "-S",
        "debug=fast",
        "-S",
        "data.split.max_per_class=4",
        "-S",
        "trainer.limit_val_batches=3",
        "report",
    )
    dvc(repo, env, "queue", "start", "-j", "1", timeout=300)  # spawning the worker is slow on a loaded box
    deadline = time.monotonic() + QUEUE_WAIT_S
    try:
        while True:
            status = dvc(repo, env, "queue", "status").stdout
            if not any(word in status for word in ("Queued", "Running")):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the queue did not finish within {QUEUE_WAIT_S}s:\n{status}")
            time.sleep(5)
    finally:
        subprocess.run(
            ["dvc", "queue", "stop", "--kill"],
            cwd=repo,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    if "Failed" in status:
        logs = [
            subprocess.run(
                ["dvc", "queue", "logs", line.split()[1]],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout[-3000:]
            for line in status.splitlines()
            if "Failed" in line
        ]
        pytest.fail(f"queued experiments failed:\n{status}\n" + "\n".join(logs))
    shown = json.loads(dvc(repo, env, "exp", "show", "--json").stdout)
    return repo, env, status, experiments(shown)


def test_both_queued_points_ran_with_metrics(queued) -> None:
    _, _, status, exps = queued
    assert status.count("Success") == 2, status
    assert len(exps) == 2
    lrs = set()
    for name, rev in exps.items():
        data = rev["data"]
        test = data["metrics"]["reports/metrics.json"]["data"]["test"]
        assert 0.0 <= test["dice"] <= 1.0 and test["images"] == 6, name
        assert set(test["per_class_dice"]) == {"MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"}
        assert "val" in data["metrics"]["dvclive/metrics.json"]["data"]
        params = data["params"]["params.yaml"]["data"]
        assert params["data"]["split"]["max_per_class"] == 4 and params["trainer"]["max_epochs"] == 1
        lrs.add(params["model"]["lr"])
    assert lrs == {1e-3, 3e-4}


def test_each_experiment_carries_its_report(queued) -> None:
    repo, env, _, exps = queued
    for rev in exps.values():
        report = run(["git", "show", f"{rev['rev']}:reports/report.md"], repo, env).stdout
        assert "## Test metrics" in report and "## Worst" in report
        assert "report_assets/pr.png" in report
    lock = run(["git", "show", f"{next(iter(exps.values()))['rev']}:dvc.lock"], repo, env).stdout
    # only the stages `report` needs ran: evaluate scores the INT8 export too, so export is one of them
    assert "report:" in lock and "export:" in lock and "package:" not in lock, "only report's ancestors ran"


def test_plots_diff_overlays_both_experiments(queued, tmp_path) -> None:
    repo, env, _, exps = queued
    names = sorted(exps)
    out = tmp_path / "plots"
    shown = json.loads(dvc(repo, env, "plots", "diff", *names, "--json", "-o", str(out)).stdout)["data"]
    for title in (
        "Loss (train vs validation)",
        "Validation Dice and IoU",
        "ROC (image-level detection)",
        "Precision-recall (image-level detection)",
        "Per-class Dice (test)",
    ):
        assert title in shown, sorted(shown)
        content = shown[title][0]["content"]
        revs = {point["rev"] for point in content["data"]["values"]}
        assert revs == set(names), (title, revs)
    # the sampled panels are the same test tiles in both experiments: each shown twice, side by side
    images = [k for k in shown if k.startswith("reports/overlays/sample_")]
    assert images and all(len(shown[k]) == 2 for k in images), (
        "each sampled overlay shown for both experiments"
    )
    # the worst panels depend on each model's mistakes: present, from either experiment
    assert any(k.startswith("reports/overlays/worst_") for k in shown)
