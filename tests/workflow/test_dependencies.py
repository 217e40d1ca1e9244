"""Dependencies: every package the code imports is declared in pyproject.toml, and the constraints
file `make venv` installs with pins every declared package (so a fresh clone gets the versions the
results were measured with)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
# first-party code; `conftest` is tests/conftest.py, which benchmarks/bench_train.py puts on sys.path
FIRST_PARTY = {"mtdefect", "tests", "conftest"}


def declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def imported_top_level(paths: list[Path]) -> dict[str, str]:
    """top-level module name → first file importing it (absolute imports only, lazy ones included)."""
    found: dict[str, str] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def third_party(paths: list[Path]) -> dict[str, str]:
    local = {p.stem for p in paths} | {p.name for p in ROOT.iterdir() if p.is_dir()}
    return {
        name: where
        for name, where in imported_top_level(paths).items()
        if name not in sys.stdlib_module_names and name not in FIRST_PARTY and name not in local
    }


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in metadata.packages_distributions().get(module, [])}


# development tools for the tests and benchmarks (never imported by the library or the service)
DEVTOOLS = "src/mtdefect/devtools"


def python_files(*roots: str, skip: str | None = None) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = ROOT / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [f for f in files if skip is None or not f.is_relative_to(ROOT / skip)]


@pytest.mark.parametrize(
    "roots,skip,extras",
    [(("src", "service.py", "benchmarks"), DEVTOOLS, ()), (("tests", DEVTOOLS), None, ("test",))],
    ids=["library-service-benchmarks", "tests-devtools"],
)
def test_every_imported_package_is_declared(
    roots: tuple[str, ...], skip: str | None, extras: tuple[str, ...]
) -> None:
    allowed = declared(*extras)
    undeclared = {}
    for module, where in sorted(third_party(python_files(*roots, skip=skip)).items()):
        dists = distributions_of(module)
        assert dists, f"{module} (imported in {where}) is not installed: which package provides it?"
        if not dists & allowed:
            undeclared[module] = (sorted(dists), where)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"not an exact pin: {line!r} (regenerate with `make lock`)"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_constraints_pin_every_declared_package_and_the_torch_build() -> None:
    pins = constraint_pins()
    missing = sorted(declared("test") - set(pins))
    assert not missing, (
        f"declared in pyproject.toml but not in {CONSTRAINTS.name}: {missing}; run `make lock`"
    )
    assert "mtdefect" not in pins, "the project itself is not a constraint"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for requirement in (
        PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    ):
        req = Requirement(requirement)
        pinned = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(pinned, prereleases=True), f"{req} does not allow the pinned {pinned}"


def test_make_venv_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS := requirements/constraints.txt" in makefile
    recipe = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "$(CONSTRAINTS)" in recipe.splitlines()[0], "the venv is rebuilt when the constraints change"
    installs = [line for line in recipe.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs


def test_no_build_output_is_tracked_and_the_named_license_exists() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--", "*.egg-info", "*.egg-info/*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if tracked.returncode != 0:
        pytest.skip(f"not a git checkout: {tracked.stderr.strip()}")
    assert tracked.stdout.strip() == "", f"build output tracked in git: {tracked.stdout.split()}"
    assert PYPROJECT["project"]["license"] == "MIT"
    for name in PYPROJECT["project"]["license-files"]:
        text = (ROOT / name).read_text()
        assert text.startswith("MIT License") and "mtdefect contributors" in text
