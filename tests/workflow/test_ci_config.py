"""The CI workflows and the pipeline's report/plots definitions: parse them and check what users rely on."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def load_workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict), name
    # YAML 1.1 reads the bare key `on` as the boolean True
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps_text(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) + " " + str(step.get("uses", "")) for step in job["steps"])


@pytest.mark.parametrize("name", ["train-report.yml", "bento.yml"])
def test_workflow_is_valid_actions_yaml(name: str) -> None:
    wf = load_workflow(name)
    assert wf["name"] and wf["on"] and wf["jobs"]
    for job_id, job in wf["jobs"].items():
        assert "runs-on" in job and job["steps"], job_id
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), (job_id, step)
        uses = [s["uses"] for s in job["steps"] if "uses" in s]
        assert any(u.startswith("actions/checkout@") for u in uses)
        assert any(u.startswith("actions/setup-python@") for u in uses)


def test_train_report_workflow_runs_the_cml_loop() -> None:
    wf = load_workflow("train-report.yml")
    assert "pull_request" in wf["on"] and "workflow_dispatch" in wf["on"]
    assert wf["permissions"]["pull-requests"] == "write"
    (job,) = wf["jobs"].values()
    text = steps_text(job)
    order = ["pip install -e .", "dvc pull", "dvc exp run", "dvc push", "cml comment create reports/report.md"]
    positions = [text.find(command) for command in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(order, positions))
    assert "iterative/setup-cml@" in text
    assert "BENTOML_HOME" in job["env"] and "REPO_TOKEN" in job["env"]


def test_bento_workflow_builds_on_push_and_tags() -> None:
    wf = load_workflow("bento.yml")
    assert "v*" in wf["on"]["push"]["tags"]
    (job,) = wf["jobs"].values()
    text = steps_text(job)
    for command in ("dvc pull", "package", "bentoml build", "bentoml containerize"):
        assert command in text, command
    containerize = next(s for s in job["steps"] if "bentoml containerize" in s.get("run", ""))
    assert "refs/tags/" in containerize["if"]


def test_report_stage_is_last_and_wired_to_evaluate() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = dvc["stages"]
    assert list(stages)[-1] == "report"
    report = stages["report"]
    assert report["cmd"] == "python -m mtdefect.stages.report"
    assert {"reports/metrics.json", "reports/plots", "reports/overlays"} <= set(report["deps"])
    outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in report["outs"]}
    assert set(outs) == {"reports/report.md", "reports/report_assets"}
    assert outs["reports/report.md"]["reports/report.md"]["cache"] is False


def test_every_top_level_plot_reads_files_a_stage_writes() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    written = set()
    for stage in dvc["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                written.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    for plot in dvc["plots"]:
        title, props = next(iter(plot.items())) if isinstance(plot, dict) else (plot, None)
        files = list(props["y"]) if props and isinstance(props.get("y"), dict) else [title]
        for file in files:
            assert any(file == w or file.startswith(w.rstrip("/") + "/") for w in written), (title, file)
