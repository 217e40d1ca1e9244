"""What the bento packs and installs, checked against what the serving code imports: a moved file or a
new import fails here, not in a deploy. Fast: reads source files and package metadata only."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml
from bentoml._internal.bento.build_config import BentoPathSpec

from mtdefect.devtools import container

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
BENTOFILE = yaml.safe_load((ROOT / "bentofile.yaml").read_text())


def module_file(name: str) -> Path | None:
    """src/ file of an mtdefect module (package → its __init__.py); None when there is none."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(imported at module level, imported inside functions) as full dotted module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            target = lazy if in_function else eager
            if isinstance(child, ast.Import):
                target.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                target.add(child.module)
                # `from mtdefect.serving import monitoring` imports a submodule
                target.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return eager, lazy


def closure(start: Path, follow_lazy: bool) -> tuple[set[Path], set[str], set[str]]:
    """mtdefect files reachable from ``start``; third-party top-level names imported eagerly / lazily."""
    files: set[Path] = set()
    eager_ext: set[str] = set()
    lazy_ext: set[str] = set()
    todo = [(start, False)]
    while todo:
        path, via_lazy = todo.pop()
        if path in files:
            continue
        files.add(path)
        eager, lazy = imports(path)
        for names, is_lazy in ((eager, via_lazy), (lazy, True)):
            for name in names:
                top = name.split(".")[0]
                if top == "mtdefect":
                    parts = name.split(".")
                    for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__...
                        found = module_file(".".join(parts[:i]))
                        if found is not None and (follow_lazy or not is_lazy):
                            todo.append((found, is_lazy))
                elif top not in STDLIB:
                    (lazy_ext if is_lazy else eager_ext).add(top)
    return files, eager_ext, lazy_ext


STDLIB = set(sys.stdlib_module_names) | {"__future__"}
SERVICE = ROOT / "service.py"
# BentoML's own matcher of bentofile.yaml's include/exclude lists
INCLUDE = BentoPathSpec(BENTOFILE["include"], BENTOFILE.get("exclude", []), str(ROOT))


def included(path: Path) -> bool:
    return INCLUDE.includes(path.relative_to(ROOT).as_posix())


def test_every_module_service_py_imports_is_packed():
    files, _, _ = closure(SERVICE, follow_lazy=True)
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if not included(p))
    assert not missing, f"bentofile.yaml's include list misses what service.py imports: {missing}"
    # the operator page's static files, served by mtdefect.serving.pages
    page = ROOT / "src" / "mtdefect" / "serving" / "page"
    assert all(included(p) for p in page.rglob("*") if p.is_file())


def test_every_include_pattern_names_existing_files():
    for pattern in BENTOFILE["include"]:
        spec = BentoPathSpec([pattern], [], str(ROOT))
        literal = re.split(r"[*?\[]", pattern.split("#")[0].strip(), maxsplit=1)[0]
        start = ROOT / literal.rsplit("/", 1)[0] if "/" in literal else ROOT
        candidates = [start] if start.is_file() else start.rglob("*") if start.is_dir() else []
        assert any(p.is_file() and spec.includes(p.relative_to(ROOT).as_posix()) for p in candidates), (
            f"bentofile.yaml includes {pattern!r}, which matches no file (moved?)"
        )


def test_packed_code_is_self_contained_and_free_of_training_code():
    packed = [p for p in (SRC / "mtdefect").rglob("*.py") if included(p)] + [SERVICE]
    for path in packed:
        files, _, _ = closure(path, follow_lazy=True)
        outside = sorted(p.relative_to(ROOT).as_posix() for p in files if not included(p))
        assert not outside, f"{path.relative_to(ROOT)} imports code the bento does not pack: {outside}"
    for path in packed:
        rel = path.relative_to(ROOT).as_posix()
        assert not rel.startswith(("src/mtdefect/data/", "src/mtdefect/model/", "src/mtdefect/stages/")), rel


def distributions_of(module: str) -> set[str]:
    return {container._canonical(d) for d in metadata.packages_distributions().get(module, [])}


def serving_pins() -> dict[str, str]:
    pins = {}
    for line in container.SERVING_REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_serving_requirements_are_current_and_torch_free():
    assert container.SERVING_REQUIREMENTS.read_text() == container.serving_requirements(), (
        "requirements/serving.txt is out of date: python -m mtdefect.devtools.container requirements"
    )
    pins = serving_pins()
    assert not {container._canonical(d) for d in container.DEVELOPMENT_ONLY} & set(pins)
    assert not [n for n in pins if n.startswith(("nvidia-cu", "triton", "lightning"))]
    python = BENTOFILE["python"]
    assert python.get("requirements_txt") == "./requirements/serving.txt"
    assert not python.get("packages") and not python.get("extra_index_url") and not python.get("index_url")
    assert BENTOFILE["docker"]["base_image"] == container.BASE_IMAGE


def test_what_serving_imports_is_installed_by_the_bento():
    """Eagerly imported third-party modules must come from requirements/serving.txt; lazily imported
    ones too, except the PyTorch backend's (development only, absent from the image)."""
    _, eager, lazy = closure(SERVICE, follow_lazy=True)
    pins = set(serving_pins())
    development = {container._canonical(d) for d in container.DEVELOPMENT_ONLY}
    assert "torch" not in eager and "segmentation_models_pytorch" not in eager
    for module in sorted(eager | lazy):
        dists = distributions_of(module)
        assert dists, f"{module}: no installed distribution provides it"
        if dists & pins:
            continue
        assert module in lazy and module not in eager and dists & development, (
            f"serving imports {module} ({sorted(dists)}), which requirements/serving.txt does not install"
        )
