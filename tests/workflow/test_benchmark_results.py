"""benchmarks/results/ holds one result per question: every committed result is listed in
benchmarks/README.md's question table (a rerun or a loaded-machine variant beside it is not) and
records the model it measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def listed_results(readme: str) -> set[str]:
    """The result files named in the README's question table (the third column)."""
    names: set[str] = set()
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3:
            names.update(re.findall(r"`([\w.-]+\.json)`", cells[2]))
    return names


def test_every_result_is_the_answer_to_a_listed_question() -> None:
    listed = listed_results((ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8"))
    assert RESULTS, "no committed benchmark results"
    unlisted = sorted(p.name for p in RESULTS if p.name not in listed)
    assert not unlisted, (
        f"{unlisted}: add the question to benchmarks/README.md's table, or remove the file if it "
        "reruns a question that already has its result"
    )


def test_the_listing_reads_the_result_column_only() -> None:
    table = (
        "| question | command | result | model |\n|---|---|---|---|\n"
        "| speed | `bench.py --result-name other.json` | `a.json` · `b.json` | x |\n"
    )
    assert listed_results(table) == {"a.json", "b.json"}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_every_result_records_its_model(path: Path) -> None:
    result = json.loads(path.read_text(encoding="utf-8"))
    assert result.get("model") or result.get("models"), f"{path.name} does not say which model it measured"
    assert result.get("machine"), f"{path.name} does not record the machine"
