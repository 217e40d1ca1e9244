"""The README's ``performance`` block: one row per target, one line per result file that measured it.

Each row is declared once in ``PERFORMANCE_ROWS``: ``files`` are result files (in
``benchmarks/results/``, or in ``dir``), ``value`` extracts the measurement from one result,
``show`` formats it and ``met`` judges it against the target (None: no target)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtdefect.docs_tables.common import benchmark_model, read_json, results_dir, start_load, table


def _cost_points(result: dict[str, Any]) -> list[str]:
    curves = result["curves"]
    fp32 = {(p["width"], p["height"]): p for p in curves.get("onnx", []) if "error" not in p}
    out = []
    for p in curves.get("onnx-int8", []):
        size = f"{p['width']}×{p['height']}"
        if "error" in p:
            out.append(f"{size}: failed ({p['error']})")
            continue
        f = fp32.get((p["width"], p["height"]))
        line = f"{size}: {p['latency']['p50_ms']:,.0f} ms, {p['peak_rss_mib']:,.0f} MiB"
        if f:
            line += f" ({f['latency']['p50_ms']:,.0f} ms, {f['peak_rss_mib']:,.0f} MiB)"
        out.append(line)
    return out


def _overhead_range(side: dict[str, Any]) -> tuple[float, float]:
    keys = ("overhead_pct", "overhead_pct_paired_median", "overhead_pct_calm_pairs", "overhead_pct_cpu")
    values = [side[k] for k in keys if k in side]
    return min(values), max(values)


# one result file per question (benchmarks/README.md says which script and arguments wrote it)
MODEL_INT8 = ["bench_model_int8.json"]
HTTP = ["bench_http_int8.json", "bench_http_fp32.json"]
PERFORMANCE_ROWS: list[dict[str, Any]] = [
    {
        "target": "INT8 ≥ 1.6× FP32 in process, same run (ONNX Runtime `predict()` p50 ratio: one 270×324 "
        "tile / "
        "40 real tiles)",
        "files": MODEL_INT8,
        "value": lambda r: (
            r["int8_ratios"]["fixed"]["int8_over_fp32_p50"],
            r["int8_ratios"]["real"]["int8_over_fp32_p50"],
        ),
        "show": lambda v: f"{v[0]:.2f}× / {v[1]:.2f}×",
        "met": lambda v: v[0] >= 1.6,
    },
    {
        "target": "in-process `predict()`, one 270×324 tile, p50 / p99: FP32 → INT8; no target",
        "files": MODEL_INT8,
        "value": lambda r: (r["fixed_270x324"]["onnx"], r["fixed_270x324"]["onnx-int8"]),
        "show": lambda v: (
            f"{v[0]['p50_ms']:.1f} / {v[0]['p99_ms']:.1f} ms → {v[1]['p50_ms']:.1f} / {v[1]['p99_ms']:.1f} ms"
        ),
        "met": None,
    },
    {
        "target": "ONNX Runtime ≥ 1.3× eager PyTorch in process (`predict()` paired median: 40 real tiles / "
        "one 270×324 tile)",
        "files": ["bench_model_torch_vs_onnx.json"],
        "value": lambda r: (
            r["ratios"]["real"]["onnx_over_torch_paired_median"],
            r["ratios"]["fixed"]["onnx_over_torch_paired_median"],
        ),
        "show": lambda v: f"{v[0]:.2f}× / {v[1]:.2f}×",
        "met": lambda v: min(v) >= 1.3,
    },
    {
        "target": "INT8 keeps the answers (validation, export stage): at FP32's threshold Dice within 0.005, "
        "same tile decision on ≥ 99.5 % of tiles, AUROC within 0.002; or (issue #22) on its own calibration "
        "Dice, AUROC and recall within 0.005 / 0.002 / 0.005 of FP32 at ≤ 1 % false alarms",
        "dir": "reports",
        "files": ["int8.json"],
        "value": lambda r: r["parity"],
        "show": lambda v: (
            f"ΔDice {v['dice_delta']:.4f}, same decision {100 * v['same_decision_rate']:.1f} % "
            f"({v['changed_decisions']} of {v['tiles']} changed), ΔAUROC {v['auroc_delta']:.4f}"
            + (
                f"; at FP32's threshold {'holds' if v['holds_by_decisions'] else 'fails'}, "
                f"on its own calibration {'holds' if v['holds_by_own_calibration'] else 'fails'}"
                if "holds_by_own_calibration" in v
                else ""
            )
        ),
        "met": lambda v: bool(v["holds"]),
    },
    {
        "target": "single request, 270×324 tile, `/detect` end to end p50 ≤ 30 ms, p99 ≤ 60 ms",
        "files": HTTP,
        "value": lambda r: (
            r["single_270x324"]["/detect"]["p50_ms"],
            r["single_270x324"]["/detect"]["p99_ms"],
        ),
        "show": lambda v: f"p50 {v[0]:.1f} ms, p99 {v[1]:.1f} ms",
        "met": lambda v: v[0] <= 30.0 and v[1] <= 60.0,
    },
    {
        "target": "HTTP at concurrency 4 ≥ 0.95× in-process (requests/s over images/s, same backend)",
        "files": HTTP,
        "value": lambda r: r["levels"]["4"]["ratio_to_inprocess"],
        "show": lambda v: f"{v:.2f}×",
        "met": lambda v: v >= 0.95,
    },
    {
        "target": "HTTP at concurrency 8: ≥ 50 tiles/s, zero errors, p99 ≤ 200 ms (real tiles)",
        "files": HTTP,
        "value": lambda r: (
            r["levels"]["8"]["req_per_s"],
            r["levels"]["8"]["errors"],
            r["levels"]["8"]["p99_ms"],
        ),
        "show": lambda v: f"{v[0]:.1f} tiles/s, {v[1]} errors, p99 {v[2]:.0f} ms",
        "met": lambda v: v[0] >= 50.0 and v[1] == 0 and v[2] <= 200.0,
    },
    {
        "target": "server RSS growth ≤ 10 % from 100 to 5,000 requests (`/detect`, concurrency 4)",
        "files": ["bench_http_soak.json"],
        "value": lambda r: (r["rss"]["growth_100_to_end"], r["rss"]["samples"][-1]["requests"]),
        "show": lambda v: f"{100 * v[0]:+.1f} % after {v[1]:,} requests",
        "met": lambda v: v[0] <= 0.10 and v[1] >= 5000,
    },
    {
        "target": "cost curve: `predict()` p50 and peak RSS by image size, INT8 (FP32); pixel cap "
        "`MT_MAX_PIXELS` = 4096²; no target",
        "files": ["bench_cost.json"],
        "value": lambda r: _cost_points(r),
        "show": lambda v: "<br>".join(v),
        "met": None,
    },
    {
        "target": "training step (batch 16 × 160², CPU): bf16 vs fp32, channels_last on/off; the faster is "
        "the "
        "default (bf16-mixed + channels_last)",
        "files": ["bench_train_precision.json"],
        "value": lambda r: r,
        "show": lambda r: ", ".join(
            f"{name} {v['median_step_ms'] / 1000:.2f} s ({v['speedup_over_fp32']:.2f}×)"
            for name, v in r["variants"].items()
        ),
        "met": lambda r: r["fastest"] == "bf16 channels_last",
    },
    {
        "target": "Lightning overhead ≤ 5 % of a plain loop (range of 4 estimates over 60 paired steps: "
        "bare Trainer / with our callbacks and logger)",
        "files": ["bench_train.json"],
        "value": lambda r: (
            _overhead_range(r["lockstep"]["lightning"]),
            _overhead_range(r["lockstep"]["lightning-conf"]),
        ),
        "show": lambda v: f"{v[0][0]:+.1f} … {v[0][1]:+.1f} % / {v[1][0]:+.1f} … {v[1][1]:+.1f} %",
        "met": lambda v: max(v[0][1], v[1][1]) <= 5.0,
    },
    {
        "target": "≥ 3,000 training images/s at 256² on a GPU (`python benchmarks/bench_train.py --gpu`)",
        "files": ["bench_train_gpu.json"],
        "value": lambda r: r["model_only"]["images_per_s"],
        "show": lambda v: f"{v:,.0f} images/s",
        "met": lambda v: v >= 3000,
    },
]


def _verdict(verdicts: list[bool]) -> str:
    if not verdicts:
        return "—"
    if all(verdicts):
        return "met" if len(verdicts) == 1 else f"met in all {len(verdicts)} runs"
    if not any(verdicts):
        return "missed" if len(verdicts) == 1 else f"missed in all {len(verdicts)} runs"
    return f"met in {sum(verdicts)} of {len(verdicts)} runs"


def performance_row(root: Path, spec: dict[str, Any]) -> list[str]:
    """One target: a line per committed result file (value · model · file (load)) and the verdict."""
    lines, verdicts = [], []
    for name in spec["files"]:
        path = (root / spec["dir"] / name) if "dir" in spec else results_dir(root) / name
        if not path.exists():
            continue
        result = read_json(path)
        value = spec["value"](result)
        model = benchmark_model(result, spec.get("model_if_unrecorded"))
        shown = f"{spec['dir']}/{name}" if "dir" in spec else name
        lines.append(f"{spec['show'](value)} · {model} · `{shown}` (load {start_load(result)})")
        if spec["met"] is not None:
            verdicts.append(bool(spec["met"](value)))
    if not lines:
        return [spec["target"], "not measured (no result file)", "open"]
    return [spec["target"], "<br>".join(lines), _verdict(verdicts)]


def performance_table(root: Path) -> str:
    rows = [performance_row(root, spec) for spec in PERFORMANCE_ROWS]
    note = (
        "Generated by `make docs` from `benchmarks/results/*.json`; each line: value · model · result file"
        " (load average when it started). † the file does not record its model: the default encoder of"
        " its day (see `UNRECORDED` in `src/mtdefect/docs_tables/common.py`)."
    )
    return "\n".join([note, "", *table(["target", "measured", "verdict"], rows)]) + "\n"
