"""A throwaway copy of the project as its own git + DVC repo, for real `dvc exp run` tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = (
    "dvc.yaml",
    "conf",
    "src",
    ".dvc/config",
    ".dvc/.gitignore",
    ".gitignore",
    ".dvcignore",
    "data/.gitignore",
    "models/.gitignore",
    "reports/.gitignore",
)


def make_repo(dest: Path, cross_validation: bool = False) -> Path:
    """A git + DVC repo holding the project's pipeline definition and sources (its deps), nothing else.

    The stages run the installed package; src/ is copied because dvc.yaml lists it as dependencies.
    ``cross_validation`` adds cv/dvc.yaml: its stages (never run in the other tests) would otherwise
    show in their `dvc status` and `dvc checkout`. The one implementation used by the integration,
    reliability and workflow tests."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*PROJECT_FILES, *(("cv/dvc.yaml",) if cross_validation else ())):
        src = ROOT / name
        if not src.exists():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(src, target)
    git(dest, "init", "-q")
    git(dest, "config", "user.email", "tests@localhost")
    git(dest, "config", "user.name", "tests")
    git(dest, "config", "commit.gpgsign", "false")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project")
    return dest


def env(bentoml_home: Path, data_source: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        MT_DATA_SOURCE=str(data_source),
        BENTOML_HOME=str(bentoml_home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@localhost",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@localhost",
        DVC_NO_ANALYTICS="1",
    )
    return e


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env(repo / ".bentoml", repo)
    ).stdout


def dvc(
    repo: Path, environment: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=environment, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result
