"""The walls of the import graph, and DVC stage deps that cover what each stage really runs.

- serving (service.py, inference/, serving/) never imports training code (model/, train, data
  pipeline modules, Lightning) nor the evaluation;
- training (train, calibrate, model/) never imports evaluation (evaluate.py, report/);
- each DVC stage lists, as deps, every module of the package it imports (transitively), including
  the classes its params instantiate by ``_target_``: editing any of them reruns the stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = "mtdefect"


def module_file(name: str) -> Path | None:
    base = SRC / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports_of(path: Path, module: str) -> set[str]:
    """Every mtdefect module ``path`` imports, at any depth of the file (function-level imports too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")}
    return found


def closure(*modules: str) -> set[str]:
    """Modules reached from ``modules`` (parent packages included: importing a.b runs a/__init__)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(imports_of(path, name))
    return seen


def service_closure() -> set[str]:
    tree = ast.parse((ROOT / "service.py").read_text())
    roots = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE)
    }
    return closure(*roots)


def test_serving_never_imports_training_or_evaluation_code() -> None:
    reached = service_closure() | closure(
        f"{PACKAGE}.inference", f"{PACKAGE}.serving.runtime", f"{PACKAGE}.store"
    )
    forbidden = [
        m
        for m in reached
        if m.startswith(
            (
                f"{PACKAGE}.model",
                f"{PACKAGE}.data",
                f"{PACKAGE}.train",
                f"{PACKAGE}.evaluate",
                f"{PACKAGE}.calibrate",
                f"{PACKAGE}.scoring",
                f"{PACKAGE}.report",
            )
        )
    ]
    assert not forbidden, f"serving reaches training/evaluation code: {sorted(forbidden)}"
    assert f"{PACKAGE}.inference.network" in reached  # the network builder lives on the serving side


def test_inference_never_imports_model_and_uses_no_lightning() -> None:
    for module in closure(f"{PACKAGE}.inference"):
        assert not module.startswith(f"{PACKAGE}.model"), module
        source = module_file(module).read_text()
        assert "lightning" not in source and "import hydra" not in source, module


def test_training_never_imports_evaluation() -> None:
    reached = closure(
        f"{PACKAGE}.train", f"{PACKAGE}.calibrate", f"{PACKAGE}.model.module", f"{PACKAGE}.stages.train"
    )
    assert not [m for m in reached if m.startswith((f"{PACKAGE}.evaluate", f"{PACKAGE}.report"))], sorted(
        reached
    )


def targets_in(node, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str) and value.startswith(PACKAGE):
                found.add(value.rpartition(".")[0])
            targets_in(value, found)
    elif isinstance(node, list):
        for value in node:
            targets_in(value, found)
    return found


def covered(module: str, deps: list[str]) -> bool:
    path = module_file(module).relative_to(ROOT).as_posix()
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def has_code(module: str) -> bool:
    """False for a package ``__init__.py`` holding only a docstring (nothing to rerun a stage for)."""
    tree = ast.parse(module_file(module).read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return bool(body)


def test_every_stage_lists_what_it_imports() -> None:
    """Fails when a stage's code (its own stage module, every mtdefect module it imports, and the
    classes its params instantiate) is not among the stage's deps in dvc.yaml or cv/dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cv_stages = yaml.safe_load((ROOT / "cv" / "dvc.yaml").read_text())["stages"]
    stages.update({f"cv/dvc.yaml:{name}": stage for name, stage in cv_stages.items()})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = {}
    for name, stage in stages.items():
        cmd = stage["cmd"]
        if f"-m {PACKAGE}.stages." not in cmd or stage.get("always_changed"):
            continue
        entry = cmd.split("-m ", 1)[1].split()[0]
        roots = [entry]
        if name == "train" or name.startswith("cv/"):  # Hydra instantiates these from params.yaml
            roots += sorted(targets_in({k: params[k] for k in ("model", "data", "callbacks")}, set()))
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        lacking = sorted(m for m in closure(*roots) if has_code(m) and not covered(m, deps))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml deps miss modules the stages import: {missing}"
