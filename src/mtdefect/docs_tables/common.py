"""What every table shares: number formatting, the markdown table, reading a result file, and naming
the model and machine load a benchmark result records."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Models of benchmark results written before the benchmarks recorded the network: the default
# encoder of conf/model/unet.yaml at the commit that added the file (resnet10t until 975280a, which
# made resnet18 the default; bench_flips.json was measured on the committed resnet18 model).
UNRECORDED = "resnet10t"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def results_dir(root: Path) -> Path:
    return root / "benchmarks" / "results"


def opened(root: Path, name: str) -> dict[str, Any] | None:
    """``benchmarks/results/<name>``, parsed, or None when it is not committed."""
    path = results_dir(root) / name
    return read_json(path) if path.exists() else None


def benchmark_model(result: dict[str, Any], fallback: str | None) -> str:
    """The model a benchmark result measured, from the result itself when it records it."""
    model = result.get("model")
    if isinstance(model, dict):
        net = model.get("net") if isinstance(model.get("net"), dict) else model
        if net.get("encoder"):
            name = f"{net.get('arch', 'Unet')} {net['encoder']}"
            flips = model.get("test_time_flips")
            return name if flips is None else f"{name} ({'+'.join(flips) or 'no flips'})"
    return f"Unet {fallback or UNRECORDED}†"


def start_load(result: dict[str, Any]) -> Any:
    """The 1-minute load average when the run started, wherever the result records it."""
    load = result.get("machine", {}).get("load_average_at_start") or (
        result.get("load_average", {}).get("before")
        or result.get("speed", {}).get("load_average_before")
        or ["?"]
    )
    return load[0]


def load_span(result: dict[str, Any]) -> str:
    """``load <start> → <end>`` (1-minute averages) of a benchmark result."""
    machine = result.get("machine", {})
    start, end = machine.get("load_average_at_start"), machine.get("load_average_at_end")
    return f"load {start[0] if start else '?'} → {end[0] if end else '?'}"
