"""Every committed JSON report and benchmark result is strict JSON (RFC 8259): no ``NaN`` or
``Infinity``, which Python's json writes by default and jq, browsers and most parsers reject.
The writers (``mtdefect.fileio.write_json_atomic``, ``benchmarks/_common.write_result``) write
``null`` instead; this reads back what was committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = ("reports/**/*.json", "benchmarks/results/*.json", "dvclive/*.json")


def strict_load(path: Path) -> object:
    def refuse(token: str) -> object:
        raise ValueError(f"{path}: {token} is not JSON (write null)")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def committed_json() -> list[Path]:
    return sorted({p for pattern in PATTERNS for p in ROOT.glob(pattern) if p.is_file()})


def test_there_are_reports_and_results_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in committed_json()}
    assert "reports/metrics.json" in names
    assert any(n.startswith("benchmarks/results/") for n in names)


@pytest.mark.parametrize("path", committed_json(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_committed_json_is_strict(path: Path) -> None:
    strict_load(path)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_the_strict_reader_rejects_non_finite_numbers(tmp_path: Path, token: str) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_text('{"test": {"per_class": {"MT_Fray": {"precision": ' + token + "}}}}")
    with pytest.raises(ValueError, match=token):
        strict_load(bad)
    bad.write_text('{"test": {"per_class": {"MT_Fray": {"precision": null}}}}')
    assert strict_load(bad) == {"test": {"per_class": {"MT_Fray": {"precision": None}}}}
