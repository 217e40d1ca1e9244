"""The real pipeline (`dvc exp run` on the project's own dvc.yaml and conf/) in a throw-away git repo:
nothing is lost or silently changed when it is rerun, reproduced, pushed/pulled through an S3 remote,
corrupted on disk, or SIGKILLed mid-training.

One project is shared by the whole module (tests run in file order and each leaves it complete).
Data: a small synthetic archive (fast, and the same on every machine); MT_RELIABILITY_DATA=real runs
the same tests on the shared Magnetic Tile archive (3 images per class in the split).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_ZIP, write_synthetic_tree, zip_tree
from tests.reliability.support import (
    DVC,
    TINY,
    child_env,
    commit_all,
    dvc_status,
    kill_group,
    make_dvc_project,
    moto_s3,
    run,
    sets,
    sha256_path,
    tree_hashes,
    wait_for,
)

pytestmark = pytest.mark.slow

MODEL = Path("models/segmenter")
WEIGHTS = MODEL / "weights.safetensors"
ROUND_TRIP = ("data/tiles", "data/split.csv", "models/segmenter", "models/onnx")
TRACKED = ("data/tiles", "data/split.csv", str(MODEL), "reports/metrics.json")
ONLY_FREEZE = {"freeze": ["always changed"]}  # the environment snapshot is always_changed by design


REAL = os.environ.get("MT_RELIABILITY_DATA", "synthetic") == "real"
OVERRIDES = (*TINY, "data.split.max_per_class=3") if REAL else TINY


class Project:
    def __init__(self, repo: Path, env: dict[str, str], archive: Path) -> None:
        self.repo, self.env, self.archive = repo, env, archive
        self.first = self.exp_run(*sets(*OVERRIDES))  # the run every test starts from
        self.first_hashes = self.hashes(*TRACKED)

    def exp_run(self, *args: str, timeout: float = 420):
        return run([DVC, "exp", "run", *args], self.repo, self.env, timeout=timeout).check()

    def status(self) -> dict:
        return dvc_status(self.repo, self.env)

    def hashes(self, *paths: str) -> dict[str, dict[str, str]]:
        return {p: tree_hashes(self.repo / p) for p in paths}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("reliability-dvc")
    if REAL:
        if not SHARED_ZIP.exists():
            pytest.skip(f"MT_RELIABILITY_DATA=real but {SHARED_ZIP} is missing")
        archive = SHARED_ZIP
    else:
        write_synthetic_tree(base / "archive", per_class=3)
        archive = zip_tree(base / "archive", base / "tiles.zip")
    repo = make_dvc_project(base / "project")
    env = child_env(
        MT_DATA_SOURCE=str(archive),
        BENTOML_HOME=str(base / "bentoml"),
        DVC_SITE_CACHE_DIR=str(base / "dvc-site-cache"),
    )
    return Project(repo, env, archive)


def test_first_run_produces_complete_valid_outputs(project: Project) -> None:
    from mtdefect.data.source import read_summary
    from mtdefect.inference import Predictor

    for stage in ("freeze", "load_data", "split", "train", "evaluate", "export", "package"):
        assert f"Running stage '{stage}'" in project.first.output, stage
    repo = project.repo
    summary = read_summary(repo / "data/tiles")
    assert summary["archive_sha256"] == sha256_path(project.archive)
    images = summary["images"]
    assert images == len(list((repo / "data/tiles").glob("MT_*/*.jpg")))
    assert images > 1000 if REAL else images == 18
    predictor = Predictor.from_dir(repo / MODEL, backend="torch")
    assert predictor.settings.info["epochs"] == 1
    metrics = json.loads((repo / "reports/metrics.json").read_text())["test"]
    assert 0.0 <= metrics["dice"] <= 1.0 and metrics["images"] == 6
    assert not (repo / "checkpoints").exists(), "a finished run leaves nothing to resume"


def test_status_is_clean_after_exp_run(project: Project) -> None:
    assert project.status() == ONLY_FREEZE
    assert "data/tiles" in (project.repo / "dvc.lock").read_text()


def test_second_run_with_nothing_changed_trains_nothing(project: Project) -> None:
    weights = project.repo / WEIGHTS
    before = (weights.stat().st_mtime_ns, sha256_path(weights))
    second = project.exp_run(*sets(*OVERRIDES))
    for stage in ("load_data", "split", "train", "evaluate", "export", "package"):
        assert f"Stage '{stage}' didn't change, skipping" in second.output, stage
        assert f"Running stage '{stage}'" not in second.output, stage
    assert (weights.stat().st_mtime_ns, sha256_path(weights)) == before, "the model was rewritten"
    assert project.hashes(*TRACKED) == project.first_hashes


def test_silent_corruption_is_detected_and_restored(project: Project) -> None:
    """A flipped byte in the dataset or the model is reported by `dvc status` and undone by `dvc checkout`."""
    repo = project.repo
    image = sorted((repo / "data/tiles").glob("MT_*/*.jpg"))[0]
    for victim in (image, repo / WEIGHTS):
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    status = project.status()
    changed = json.dumps(status)
    assert "data/tiles" in changed and "models/segmenter" in changed, status
    run([DVC, "checkout", "--force"], repo, project.env, timeout=120).check()
    assert project.status() == ONLY_FREEZE
    assert project.hashes(*TRACKED) == project.first_hashes


def test_s3_remote_round_trip_is_byte_identical(project: Project, tmp_path: Path) -> None:
    """push to a real (loopback, moto) S3 endpoint, clone the git repo, pull: same bytes everywhere."""
    import boto3

    repo = project.repo
    creds = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    env = {**project.env, **creds}
    with moto_s3(tmp_path / "moto.log") as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="mt-dvc")
        run([DVC, "remote", "add", "-f", "-d", "store", "s3://mt-dvc/cache"], repo, env).check()
        run([DVC, "remote", "modify", "store", "endpointurl", endpoint], repo, env).check()
        config = (repo / ".dvc/config").read_text()
        assert "testing" not in config and "secret" not in config.lower(), "credentials leaked into the repo"
        commit_all(repo, "pipeline results + S3 remote")
        pushed = run([DVC, "push"], repo, env, timeout=180).check()
        objects = s3.list_objects_v2(Bucket="mt-dvc", Prefix="cache/").get("KeyCount", 0)
        assert objects >= 20, f"only {objects} objects reached the bucket:\n{pushed.output[-2000:]}"

        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, timeout=60)
        for path in ROUND_TRIP:
            assert not (clone / path).exists(), f"{path} came through git, not the remote"
        run([DVC, "pull"], clone, env, timeout=180).check()
        status = run([DVC, "status", "--cloud", "--json"], repo, env, timeout=120).check()
        assert json.loads(status.output.strip().splitlines()[-1] or "{}") == {}, status.output
    for path in ROUND_TRIP:
        original, pulled = tree_hashes(repo / path), tree_hashes(clone / path)
        assert original and pulled == original, f"{path} differs after the round trip"
    assert dvc_status(clone, env) == ONLY_FREEZE


def test_same_seed_reproduces_data_model_and_metrics(project: Project) -> None:
    """Force every stage up to evaluation to run again: identical dataset, manifest, weights, metrics."""
    forced = project.exp_run("--force", *sets(*OVERRIDES), "evaluate")
    for stage in ("load_data", "split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in forced.output, stage
    now = project.hashes(*TRACKED)
    first = project.first_hashes
    assert now["data/tiles"] == first["data/tiles"]
    assert now["data/split.csv"] == first["data/split.csv"]
    assert now[str(MODEL)]["weights.safetensors"] == first[str(MODEL)]["weights.safetensors"], "weights"
    assert now[str(MODEL)]["calibration.json"] == first[str(MODEL)]["calibration.json"]
    assert now["reports/metrics.json"] == first["reports/metrics.json"], "metrics differ"


def test_sigkill_mid_training_resumes_from_last_checkpoint(project: Project, tmp_path: Path) -> None:
    import torch

    from mtdefect.inference import Predictor

    repo, epochs = project.repo, 4
    args = [DVC, "exp", "run", *sets(*OVERRIDES, f"trainer.max_epochs={epochs}"), "train"]
    last = repo / "checkpoints" / "last.ckpt"
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=repo, env=project.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        saw_checkpoint = wait_for(last.exists, timeout=240, alive=proc)
    finally:
        code = kill_group(proc)
    output = log.read_text(errors="replace")
    assert saw_checkpoint, f"no checkpoint appeared before the run ended:\n{output[-3000:]}"
    assert code == -9, f"the run finished before it could be killed (exit {code}):\n{output[-3000:]}"
    assert "Running stage 'train'" in output and not (repo / MODEL).exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < epochs - 1

    resumed = project.exp_run(*sets(*OVERRIDES, f"trainer.max_epochs={epochs}"), "train")
    assert "resuming interrupted training from checkpoints/last.ckpt" in resumed.output
    assert "Restored all states from the checkpoint" in resumed.output
    assert "Stage 'load_data' didn't change, skipping" in resumed.output
    assert "Stage 'split' didn't change, skipping" in resumed.output
    predictor = Predictor.from_dir(repo / MODEL, backend="torch")
    assert predictor.settings.info["epochs"] == epochs
    live = json.loads((repo / "dvclive/metrics.json").read_text())
    assert live["epoch"] == epochs - 1
    assert all(math.isfinite(v) for v in (live["train"]["loss"], live["val"]["loss"]))
    assert 0.0 <= live["val"]["dice"] <= 1.0
    assert not (repo / "checkpoints").exists()
    assert dvc_status(repo, project.env).get("train") is None
