"""Serving under load (issue #22): ``benchmarks/results/serving_load.json`` from
``benchmarks/bench_serving_load.py``: per server configuration (workers x threads), tiles/s against
in-process on the same cores, the 270 x 324 /detect latency against the reference network, and the
memory under a burst of maximum-size uploads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtdefect.docs_tables.common import benchmark_model, fmt, load_span, opened, table

RESULT = "serving_load.json"


def _errors(level: dict[str, Any]) -> str:
    kinds = level.get("error_kinds") or {}
    return ", ".join(f"{n} × {kind.replace('http ', '')}" for kind, n in kinds.items()) or "no errors"


def _levels(config: dict[str, Any]) -> str:
    return "<br>".join(
        f"c={c}: {level['req_per_s']:.1f} tiles/s = {level['ratio']:.2f}× in process "
        f"({level['inprocess_tiles_per_s']:.1f}), p99 {level['p99_ms']:.0f} ms, {_errors(level)}"
        for c, level in config.get("throughput", {}).items()
    )


def _memory(config: dict[str, Any]) -> str:
    memory = config.get("memory")
    if not memory:
        return "—"
    counts = ", ".join(f"{n}× {status}" for status, n in memory["status_counts"].items())
    alive = memory.get("alive_after", {})
    return (
        f"{memory['uploads']} × {memory.get('side', 4096)}²: {counts}; "
        f"RSS {memory['rss_idle_before_mib']:.0f} → peak {memory['rss_peak_mib']:.0f} → "
        f"{memory['rss_idle_after_20s_mib']:.0f} MiB 20 s after; "
        f"/readyz {alive.get('readyz', '?')} after"
    )


def serving_load_table(root: Path) -> str:
    result = opened(root, RESULT)
    if not result:
        return "_Not measured yet (`python benchmarks/bench_serving_load.py` writes it)._\n"
    model = result.get("model", {})
    header = [
        "workers × threads",
        "backend",
        "/detect 270×324 p50 vs reference in process",
        "throughput (real tiles)",
        "memory burst",
    ]
    rows = []
    for label, config in result["configs"].items():
        latency = config["latency_270x324"]
        ref = sum(latency["reference_predict_p50_ms"]) / len(latency["reference_predict_p50_ms"])
        rows.append(
            [
                label.replace("x", " × "),
                str(config.get("backend")),
                f"{latency['detect']['p50_ms']:.1f} ms vs {ref:.1f} ms "
                f"= {fmt(latency['ratio_to_reference'], 2)}×",
                _levels(config),
                _memory(config),
            ]
        )
    note = (
        f"Generated from `benchmarks/results/{RESULT}` · {benchmark_model(result, None)} · "
        f"{model.get('source', '?')} · {load_span(result)}; reference: {result['reference']['net']}, "
        "ONNX Runtime FP32, in process.\n\n"
    )
    return note + "\n".join(table(header, rows)) + "\n"
