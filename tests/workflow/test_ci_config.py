"""The CI workflows and the pipeline's report/plots definitions: parse them and check what users rely on.

Every workflow file is validated against the GitHub workflow schema (check-jsonschema's built-in
`vendor.github-workflows`) and audited by zizmor (offline, pedantic persona: zero findings); the
DVC remote the workflows pull from and push to is the one `.dvc/config` defines.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.y*ml"))


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
    assert wf["permissions"] == {}, "no workflow-wide permissions: each job asks for its own"
    (job,) = wf["jobs"].values()
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}
    text = steps_text(job)
    order = [
        "pip install -c requirements/constraints.txt -e .",
        "dvc pull",
        "dvc exp run",
        "dvc push",
        "cml comment create reports/report.md",
    ]
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


# ------------------------------------------------------------------ schema, security audit, DVC remote


def tool(name: str) -> str:
    """A console script of this environment (declared in the test extra), else one on PATH."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -c requirements/constraints.txt -e '.[test]'"
    return found


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def zizmor(*paths: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [
            tool("zizmor"),
            "--offline",
            "--persona",
            "pedantic",
            "--format",
            "json",
            "--no-progress",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.stdout.strip().startswith("["), (
        f"zizmor failed ({result.returncode}):\n{result.stderr[-3000:]}"
    )
    return result.returncode, json.loads(result.stdout)


def test_there_are_workflows_to_check() -> None:
    assert {p.name for p in WORKFLOW_FILES} >= {"train-report.yml", "bento.yml"}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_matches_the_github_workflow_schema(path: Path) -> None:
    result = check_jsonschema(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n        run: echo both\n    timeout-minutes: soon\n"
    )
    assert check_jsonschema(broken).returncode != 0


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    code, findings = zizmor(*WORKFLOW_FILES)
    summary = [
        (f["ident"], f["determinations"]["severity"], f["locations"][0]["symbolic"]["key"]) for f in findings
    ]
    assert not findings and code == 0, summary


def test_zizmor_catches_what_the_workflows_avoid(tmp_path: Path) -> None:
    risky = tmp_path / ".github" / "workflows" / "risky.yml"
    risky.parent.mkdir(parents=True)
    risky.write_text(
        "name: risky\non: pull_request_target\npermissions: write-all\njobs:\n  build:\n"
        "    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    code, findings = zizmor(risky)
    found = {f["ident"] for f in findings}
    assert code != 0 and {"unpinned-uses", "template-injection", "excessive-permissions"} <= found, found


def test_actions_are_pinned_to_a_commit_with_the_release_named() -> None:
    for path in WORKFLOW_FILES:
        for line in path.read_text().splitlines():
            match = re.search(r"uses:\s*(\S+)", line)
            if match:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", match.group(1)), (path.name, line)
                assert re.search(r"#\s*v\d+\.\d+\.\d+", line), (
                    f"{path.name}: name the release: {line.strip()}"
                )


def dvc_config() -> dict[str, dict[str, str]]:
    """.dvc/config (git-config style: `[section]` / `['remote "name"']`, indented `key = value`)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for raw in (ROOT / ".dvc" / "config").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]").strip("'")
            sections[current] = {}
        else:
            key, _, value = line.partition("=")
            sections[current][key.strip()] = value.strip()
    return sections


def test_dvc_config_defines_the_default_s3_remote_without_credentials() -> None:
    config = dvc_config()
    default = config["core"]["remote"]
    remote = config[f'remote "{default}"']
    assert default == "storage" and remote["url"].startswith("s3://") and remote.get("region")
    secret_keys = {"access_key_id", "secret_access_key", "session_token", "credentialpath"}
    for name, section in config.items():
        assert not secret_keys & set(section), f"credentials committed in .dvc/config [{name}]"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflows_use_the_defined_remote_with_credentials_from_secrets(path: Path) -> None:
    remotes = {name.split('"')[1] for name in dvc_config() if name.startswith('remote "')}
    data = load_workflow(path.name)
    for job_id, job in data["jobs"].items():
        commands = [
            c
            for s in job["steps"]
            for c in str(s.get("run", "")).splitlines()
            if re.search(r"\bdvc (pull|push)\b", c)
        ]
        for command in commands:
            named = re.search(r"\s-r\s+(\S+)", command)
            assert named and named.group(1) in remotes, (
                f"{path.name}/{job_id}: {command.strip()} names no defined remote"
            )
        if commands:
            env = job.get("env", {})
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env.get(key) == f"${{{{ secrets.{key} }}}}", (
                    f"{path.name}/{job_id}: {key} not from secrets"
                )


def precommit_pins() -> dict[str, str]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    pins = {}
    for repo in config["repos"]:
        for hook in repo["hooks"]:
            for dependency in hook.get("additional_dependencies", []):
                name, _, version = dependency.partition("==")
                pins[name.lower()] = version
    return pins


def test_precommit_hooks_run_the_tool_versions_of_the_constraints() -> None:
    constraints = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    constraints = {k.lower(): v for k, v in constraints.items()}
    pins = precommit_pins()
    assert set(pins) == {"ruff", "check-jsonschema", "zizmor"}
    assert {name: constraints.get(name) for name in pins} == pins
