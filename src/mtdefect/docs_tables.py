"""The README's results and performance tables, generated from the files the pipeline and the
benchmarks write, so the numbers in the README cannot drift from them (``make docs``).

    python -m mtdefect.docs_tables README.md            # rewrite the tables between the markers
    python -m mtdefect.docs_tables README.md --check    # exit 1 if the README is not what this writes
    python -m mtdefect.docs_tables docs/PERFORMANCE.md  # its ``lite0`` block (the #14 benchmarks)
    python -m mtdefect.docs_tables --save-seed reports/seeds/seed_43.json   # keep a finished run

A table lives between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` (names: ``results``,
``performance``); everything outside the markers is left alone. Which files feed which rows is
declared once, in ``RESULT_ROWS`` and ``PERFORMANCE_ROWS`` below; every row names the model its
numbers measured.

Inputs (paths relative to the repository root):

- ``reports/metrics.json`` (test split) and ``reports/validation.json``: the committed baseline
  run; its seed and model are the train stage's params recorded in ``dvc.lock`` (what produced
  the committed outputs), or ``params.yaml`` without a lock;
- ``reports/seeds/*.json`` (optional): one file per finished seed of a config, written by
  ``--save-seed`` from the same files: ``{"seed", "params", "metrics", "validation"}``;
  shown as mean ± std (sample std) when present;
- ``benchmarks/results/*.json``: the benchmarks' results; each names its model (``model.net``,
  written by the benchmarks since the model record was added) or, for older files that do not,
  the encoder is given in ``PERFORMANCE_ROWS`` (``model_if_unrecorded``) and marked with ``†``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from mtdefect.fileio import write_json_atomic, write_text_atomic

# ------------------------------------------------------------------------------------------ sources

# Results: one dict per row. "baseline" rows read one run's files; "seeds" rows aggregate
# every file matching the glob. "hardware" is what the run was measured on (not recorded by the
# pipeline: say it here when you commit a run from another machine).
RESULT_ROWS: list[dict[str, str]] = [
    {
        "kind": "baseline",
        "run": "**CPU default** (`dvc exp run`), seed {seed}",
        "hardware": "2-core AMD EPYC (AVX512-BF16), no GPU",
        "metrics": "reports/metrics.json",
        "validation": "reports/validation.json",
        "params": "params.yaml",
    },
    {
        "kind": "seeds",
        "run": "CPU default, **{n} seeds ({seeds}): mean ± std**",
        "hardware": "same (trained two at a time, one thread each)",
        "glob": "reports/seeds/*.json",
    },
    {
        "kind": "seeds",
        "run": "**`experiment=cpu_2h`**, seed {seeds}",
        "hardware": "same (one thread, beside the default's seeds)",
        "glob": "reports/experiments/cpu_2h/*.json",
    },
    {
        "kind": "seeds",
        "run": "CPU default on the old image-by-image split (the same tile under another light in train "
        "and test; replaced by the tile-grouped split), {n} seeds ({seeds})",
        "hardware": "same",
        "glob": "reports/seeds_image_split/*.json",
    },
]

# Models of benchmark results written before the benchmarks recorded the network: the default
# encoder of conf/model/unet.yaml at the commit that added the file (resnet10t until 975280a, which
# made resnet18 the default; bench_flips.json was measured on the committed resnet18 model).
UNRECORDED = "resnet10t"


# Performance: one dict per target; "files" are benchmark results (in benchmarks/results/),
# "value" extracts the measurement from one result, "met" judges it (None: no target).
HTTP_LITE0 = ["bench_http_lite0_int8.json", "bench_http_lite0_int8_loaded.json", "bench_http_lite0_fp32.json"]
PERFORMANCE_ROWS: list[dict[str, Any]] = [
    {
        "target": "INT8 ≥ 1.6× FP32 in process, same run (ONNX Runtime `predict()` p50 ratio: one 270×324 "
        "tile / "
        "40 real tiles)",
        "files": [
            "bench_model_lite0.json",
            "bench_model_lite0_loaded.json",
            "bench_model_lite0_recheck.json",
        ],
        "value": lambda r: (
            r["int8_ratios"]["fixed"]["int8_over_fp32_p50"],
            r["int8_ratios"]["real"]["int8_over_fp32_p50"],
        ),
        "show": lambda v: f"{v[0]:.2f}× / {v[1]:.2f}×",
        "met": lambda v: v[0] >= 1.6,
    },
    {
        "target": "in-process `predict()`, one 270×324 tile, p50 / p99: FP32 → INT8; no target",
        "files": [
            "bench_model_lite0.json",
            "bench_model_lite0_loaded.json",
            "bench_model_lite0_recheck.json",
        ],
        "value": lambda r: (r["fixed_270x324"]["onnx"], r["fixed_270x324"]["onnx-int8"]),
        "show": lambda v: (
            f"{v[0]['p50_ms']:.1f} / {v[0]['p99_ms']:.1f} ms → {v[1]['p50_ms']:.1f} / {v[1]['p99_ms']:.1f} ms"
        ),
        "met": None,
    },
    {
        "target": "INT8 keeps the answers (validation, export stage): Dice within 0.005, same tile decision "
        "on "
        "≥ 99.5 % of tiles, AUROC within 0.002",
        "dir": "reports",
        "files": ["int8.json"],
        "value": lambda r: r["parity"],
        "show": lambda v: (
            f"ΔDice {v['dice_delta']:.4f}, same decision {100 * v['same_decision_rate']:.1f} % "
            f"({v['changed_decisions']} of {v['tiles']} changed), ΔAUROC {v['auroc_delta']:.4f}"
        ),
        "met": lambda v: bool(v["holds"]),
    },
    {
        "target": "single request, 270×324 tile, `/detect` end to end p50 ≤ 30 ms, p99 ≤ 60 ms",
        "files": HTTP_LITE0,
        "value": lambda r: (
            r["single_270x324"]["/detect"]["p50_ms"],
            r["single_270x324"]["/detect"]["p99_ms"],
        ),
        "show": lambda v: f"p50 {v[0]:.1f} ms, p99 {v[1]:.1f} ms",
        "met": lambda v: v[0] <= 30.0 and v[1] <= 60.0,
    },
    {
        "target": "HTTP at concurrency 4 ≥ 0.95× in-process (requests/s over images/s, same backend)",
        "files": HTTP_LITE0,
        "value": lambda r: r["levels"]["4"]["ratio_to_inprocess"],
        "show": lambda v: f"{v:.2f}×",
        "met": lambda v: v >= 0.95,
    },
    {
        "target": "HTTP at concurrency 8: ≥ 50 tiles/s, zero errors, p99 ≤ 200 ms (real tiles)",
        "files": HTTP_LITE0,
        "value": lambda r: (
            r["levels"]["8"]["req_per_s"],
            r["levels"]["8"]["errors"],
            r["levels"]["8"]["p99_ms"],
        ),
        "show": lambda v: f"{v[0]:.1f} tiles/s, {v[1]} errors, p99 {v[2]:.0f} ms",
        "met": lambda v: v[0] >= 50.0 and v[1] == 0 and v[2] <= 200.0,
    },
    {
        "target": "cost curve: `predict()` p50 and peak RSS by image size, INT8 (FP32); pixel cap "
        "`MT_MAX_PIXELS` = 4096²; no target",
        "files": ["bench_cost_lite0.json"],
        "value": lambda r: _cost_points(r),
        "show": lambda v: "<br>".join(v),
        "met": None,
    },
    {
        "target": "training step (batch 16 × 160², CPU): bf16 vs fp32, channels_last on/off; the faster is "
        "the "
        "default (bf16-mixed + channels_last)",
        "files": ["bench_train_precision_lite0.json"],
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


MARKER = re.compile(
    r"(<!-- BEGIN (?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.DOTALL
)


# ------------------------------------------------------------------------------------------ helpers


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


def _late_rss_slope(samples: Sequence[dict[str, Any]], after: int) -> float:
    """KiB of resident memory per request between the first sample at ``after`` requests and the last."""
    late = [s for s in samples if s["requests"] >= after]
    if len(late) < 2 or late[-1]["requests"] == late[0]["requests"]:
        return float("nan")
    return (
        (late[-1]["total_mib"] - late[0]["total_mib"]) * 1024 / (late[-1]["requests"] - late[0]["requests"])
    )


def _overhead_range(side: dict[str, Any]) -> tuple[float, float]:
    keys = ("overhead_pct", "overhead_pct_paired_median", "overhead_pct_calm_pairs", "overhead_pct_cpu")
    values = [side[k] for k in keys if k in side]
    return min(values), max(values)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ results


def _run(metrics: dict, validation: dict, params: dict, seed: Any = None) -> dict[str, Any]:
    """One run's numbers, as the table shows them."""
    test = metrics["test"]
    model = params.get("model", {})
    flips = test.get("test_time_flips") or "none"
    return {
        "seed": seed if seed is not None else params.get("seed"),
        "model": f"{model.get('arch', '?')} {model.get('encoder', '?')}",
        "flips": flips if isinstance(flips, str) else "+".join(flips) or "none",
        "train_min": validation.get("train/seconds", float("nan")) / 60,
        "val_dice": validation.get("val/dice"),
        "dice": test.get("dice"),
        "iou": test.get("iou"),
        "dice_ungated": test.get("dice_ungated"),
        "per_class": test.get("per_class_dice", {}),
        "recall": test.get("detection", {}).get("recall"),
        "false_alarm_rate": test.get("detection", {}).get("false_alarm_rate"),
        "auroc": test.get("detection", {}).get("auroc"),
        "mean_class_dice": test.get("mean_class_dice"),
        "class_accuracy": test.get("classification", {}).get("accuracy"),
        "decision": test.get("score_source", "mask"),
    }


def run_params(root: Path, params_file: str = "params.yaml") -> dict[str, Any]:
    """The seed and model the committed outputs were produced with: the train stage's params as
    dvc.lock records them (params.yaml may already hold the next experiment's config), else
    params.yaml itself."""
    lock = root / "dvc.lock"
    if lock.exists():
        train = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("train", {})
        recorded = train.get("params", {}).get(params_file, {})
        if "model" in recorded:
            return {"seed": recorded.get("seed"), "model": recorded["model"]}
    params = yaml.safe_load((root / params_file).read_text()) or {}
    return {"seed": params.get("seed"), "model": params.get("model", {})}


def save_seed(root: Path, out: Path) -> Path:
    """Bundle the current run (its params, reports/metrics.json, reports/validation.json) into one file."""
    params = run_params(root)
    payload = {
        "seed": params["seed"],
        "params": params,
        "metrics": read_json(root / "reports" / "metrics.json"),
        "validation": read_json(root / "reports" / "validation.json"),
    }
    return write_json_atomic(out, payload, indent=2, sort_keys=True)


def result_runs(root: Path, row: dict[str, str]) -> list[dict[str, Any]]:
    if row["kind"] == "baseline":
        paths = [root / row[k] for k in ("metrics", "validation")]
        if not all(p.exists() for p in paths):
            return []
        return [_run(read_json(paths[0]), read_json(paths[1]), run_params(root, row["params"]))]
    runs = []
    for path in sorted(root.glob(row["glob"])):
        data = read_json(path)
        runs.append(_run(data["metrics"], data["validation"], data.get("params", {}), data.get("seed")))
    return sorted(runs, key=lambda r: (r["seed"] is None, r["seed"]))


def results_table(root: Path) -> str:
    rows_runs = [(row, result_runs(root, row)) for row in RESULT_ROWS]
    classes = sorted({c for _, runs in rows_runs for run in runs for c in run["per_class"]})
    header = [
        "run",
        "model (test-time flips)",
        "hardware",
        "train",
        "val Dice",
        "test Dice / IoU",
        "ungated Dice",
        *(c.removeprefix("MT_") for c in classes),
        "mean class Dice",
        "decision",
        "recall",
        "false alarms",
        "AUROC",
        "class top-1",
    ]
    rows = []
    for row, runs in rows_runs:
        if not runs:
            continue
        if row["kind"] == "baseline":
            (r,) = runs
            rows.append(
                [
                    row["run"].format(seed=r["seed"]),
                    f"{r['model']} ({r['flips']})",
                    row["hardware"],
                    f"{r['train_min']:.1f} min",
                    fmt(r["val_dice"]),
                    f"{fmt(r['dice'])} / {fmt(r['iou'])}",
                    fmt(r["dice_ungated"]),
                    *(fmt(r["per_class"].get(c)) for c in classes),
                    fmt(r["mean_class_dice"]),
                    r["decision"],
                    fmt(r["recall"]),
                    fmt(r["false_alarm_rate"]),
                    fmt(r["auroc"]),
                    fmt(r["class_accuracy"]),
                ]
            )
            continue
        models = sorted({r["model"] for r in runs})
        flips = ", ".join(
            f"{name} ×{sum(r['flips'] == name for r in runs)}" for name in sorted({r["flips"] for r in runs})
        )
        rows.append(
            [
                row["run"].format(n=len(runs), seeds=", ".join(str(r["seed"]) for r in runs)),
                f"{' / '.join(models)} ({flips})",
                row["hardware"],
                f"{mean_std([r['train_min'] for r in runs], 1)} min",
                mean_std([r["val_dice"] for r in runs]),
                f"{mean_std([r['dice'] for r in runs])} / {mean_std([r['iou'] for r in runs])}",
                mean_std([r["dice_ungated"] for r in runs]),
                *(mean_std([r["per_class"].get(c) for r in runs]) for c in classes),
                mean_std([r["mean_class_dice"] for r in runs]),
                "/".join(sorted({r["decision"] for r in runs})),
                mean_std([r["recall"] for r in runs]),
                mean_std([r["false_alarm_rate"] for r in runs]),
                mean_std([r["auroc"] for r in runs]),
                mean_std([r["class_accuracy"] for r in runs]),
            ]
        )
    if not rows:
        return "_No run results committed yet (`reports/metrics.json`)._\n"
    note = (
        "Generated by `make docs` from `reports/metrics.json`, `reports/validation.json`, the train"
        " params in `dvc.lock`, `reports/seeds/*.json` and the files each row names; test split unless"
        " marked val."
    )
    return "\n".join([note, "", *table(header, rows)]) + "\n"


# ------------------------------------------------------------------------------------------ performance


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


def performance_table(root: Path) -> str:
    results = root / "benchmarks" / "results"
    rows = []
    for spec in PERFORMANCE_ROWS:
        lines, verdicts = [], []
        for name in spec["files"]:
            path = (root / spec["dir"] / name) if "dir" in spec else results / name
            if not path.exists():
                continue
            result = read_json(path)
            value = spec["value"](result)
            load = result.get("machine", {}).get("load_average_at_start") or (
                result.get("load_average", {}).get("before")
                or result.get("speed", {}).get("load_average_before")
                or ["?"]
            )
            load = load[0]
            model = benchmark_model(result, spec.get("model_if_unrecorded"))
            shown = f"{spec['dir']}/{name}" if "dir" in spec else name
            lines.append(f"{spec['show'](value)} · {model} · `{shown}` (load {load})")
            if spec["met"] is not None:
                verdicts.append(bool(spec["met"](value)))
        if not lines:
            rows.append([spec["target"], "not measured (no result file)", "open"])
            continue
        if not verdicts:
            verdict = "—"
        elif all(verdicts):
            verdict = "met" if len(verdicts) == 1 else f"met in all {len(verdicts)} runs"
        elif not any(verdicts):
            verdict = "missed" if len(verdicts) == 1 else f"missed in all {len(verdicts)} runs"
        else:
            verdict = f"met in {sum(verdicts)} of {len(verdicts)} runs"
        rows.append([spec["target"], "<br>".join(lines), verdict])
    note = (
        "Generated by `make docs` from `benchmarks/results/*.json`; each line: value · model · result file"
        " (load average when it started). † the file does not record its model: the default encoder of"
        " its day (see `UNRECORDED` in `src/mtdefect/docs_tables.py`)."
    )
    return "\n".join([note, "", *table(["target", "measured", "verdict"], rows)]) + "\n"


def _load(result: dict[str, Any]) -> str:
    machine = result.get("machine", {})
    start, end = machine.get("load_average_at_start"), machine.get("load_average_at_end")
    return f"load {start[0] if start else '?'} → {end[0] if end else '?'}"


def lite0_detail(root: Path) -> str:
    """docs/PERFORMANCE.md's tables of the EfficientNet-Lite0 model (issue #14), from the same files."""
    results = root / "benchmarks" / "results"
    out = [
        "Generated by `make docs` from `benchmarks/results/*_lite0*.json` and `reports/int8.json`; "
        "every table names its file, model and the machine load (1-minute average at start → end).",
        "",
    ]

    def opened(name: str) -> dict[str, Any] | None:
        path = results / name
        return read_json(path) if path.exists() else None

    r = opened("bench_model_lite0.json")
    if r:
        out += [
            f"**In process** (`bench_model.py`, {benchmark_model(r, None)}, `{r['model']['source']}`, "
            f"{_load(r)}): `Predictor.predict`, calls interleaved between the backends.",
            "",
        ]
        rows = []
        for label, key in (("one 270×324 tile", "fixed_270x324"), ("real tiles", "real")):
            for backend, v in r[key].items():
                rows.append(
                    [
                        label,
                        backend,
                        f"{v['n']}",
                        f"{v['p50_ms']:.1f}",
                        f"{v['p99_ms']:.1f}",
                        f"{v['network_p50_ms']:.1f}",
                        f"{v['images_per_s']:.1f}",
                    ]
                )
        out += table(["input", "backend", "calls", "p50 ms", "p99 ms", "network p50 ms", "images/s"], rows)
        i = r.get("int8_ratios", {})
        if i.get("fixed"):
            out += [
                "",
                f"INT8 over FP32: p50 ratio {i['fixed']['int8_over_fp32_p50']:.2f}× (270×324), "
                f"{i['real']['int8_over_fp32_p50']:.2f}× (real tiles); paired per-call median "
                f"{i['fixed']['int8_over_fp32_paired_median']:.2f}× / "
                f"{i['real']['int8_over_fp32_paired_median']:.2f}×.",
            ]
        out.append("")
    for precision in ("int8", "fp32"):
        r = opened(f"bench_http_lite0_{precision}.json")
        if not r:
            continue
        out += [
            f"**HTTP, {precision.upper()}** (`bench_http.py --backend {r['server_env'].get('MT_BACKEND')}`, "
            f"{benchmark_model(r, None)}, {_load(r)}): a real `bentoml serve`, loopback, keep-alive.",
            "",
        ]
        rows = [
            [
                route,
                f"{v['ok']}",
                f"{v['errors']}",
                f"{v['p50_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                f"{v['server_inference_p50_ms']:.1f}",
            ]
            for route, v in r["single_270x324"].items()
        ]
        out += table(
            ["single 270×324, concurrency 1", "ok", "errors", "p50 ms", "p99 ms", "server model p50 ms"], rows
        )
        out.append("")
        rows = [
            [
                c,
                f"{v['ok']}",
                f"{v['errors']}",
                f"{v['req_per_s']:.1f}",
                f"{v['p50_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                f"{v['inprocess_ort_predict_per_s']:.1f}",
                f"{v['ratio_to_inprocess']:.2f}×",
            ]
            for c, v in r["levels"].items()
        ]
        out += table(
            [
                "real tiles, concurrency",
                "ok",
                "errors",
                "req/s",
                "p50 ms",
                "p99 ms",
                "in-process img/s",
                "HTTP / in-process",
            ],
            rows,
        )
        out.append("")
    r = opened("bench_cost_lite0.json")
    if r:
        cap = r["pixel_cap"]
        out += [
            f"**Cost curve** (`bench_cost.py`, {benchmark_model(r, None)}, {_load(r)}): one child process "
            "per "
            f"point, peak RSS (VmHWM) reset after loading; pixel cap `MT_MAX_PIXELS` = "
            f"{cap['MT_MAX_PIXELS_default']:,} "
            f"px ({cap['side_at_cap']}²): larger uploads are refused with 413 before decoding.",
            "",
        ]
        fp32 = {(p["width"], p["height"]): p for p in r["curves"].get("onnx", []) if "error" not in p}
        rows = []
        for p in r["curves"].get("onnx-int8", []):
            if "error" in p:
                rows.append(
                    [f"{p['width']}×{p['height']}", f"{p['megapixels']:.2f}", "failed", "", "", "", "", ""]
                )
                continue
            f = fp32.get((p["width"], p["height"]), {})
            rows.append(
                [
                    f"{p['width']}×{p['height']}",
                    f"{p['megapixels']:.2f}",
                    f"{p['latency']['p50_ms']:,.1f}",
                    f"{p['ms_per_megapixel']:,.0f}",
                    f"{p['peak_rss_mib']:,.0f}",
                    f"{f['latency']['p50_ms']:,.1f}" if f else "—",
                    f"{f['peak_rss_mib']:,.0f}" if f else "—",
                    f"{f['latency']['p50_ms'] / p['latency']['p50_ms']:.2f}×" if f else "—",
                ]
            )
        out += table(
            [
                "size (W×H)",
                "MP",
                "INT8 p50 ms",
                "INT8 ms/MP",
                "INT8 peak RSS MiB",
                "FP32 p50 ms",
                "FP32 peak RSS MiB",
                "INT8 speed-up",
            ],
            rows,
        )
        fits = [
            f"{b}: {v['intercept_ms']:.1f} ms + {v['ms_per_megapixel']:.0f} ms/MP (largest residual "
            f"{100 * v['max_relative_residual']:.0f} %)"
            for b, v in r.get("linear_fit", {}).items()
            if v
        ]
        if fits:
            out += ["", "Least-squares line through the points: " + "; ".join(fits) + "."]
        out.append("")
    r = opened("bench_train_precision_lite0.json")
    if r:
        m = r["model"]
        out += [
            f"**Training step** (`bench_train_precision.py`, Unet {m['encoder']}, "
            f"batch {r['args']['batch']} × "
            f"{r['args']['crop']}², {r['args']['steps']} interleaved steps each, torch threads "
            f"{r['machine'].get('torch_threads')}, "
            f"load {r['machine'].get('load_average_before_timed_steps', ['?'])[0]}"
            f" → {r['machine'].get('load_average_after_timed_steps', ['?'])[0]}).",
            "",
        ]
        rows = [
            [
                n,
                f"{v['median_step_ms']:,.0f}",
                f"{v['step']['p90_ms']:,.0f}",
                f"{v['images_per_s']:.1f}",
                f"{v['speedup_over_fp32']:.2f}×",
            ]
            for n, v in r["variants"].items()
        ]
        out += table(["variant", "median step ms", "p90 ms", "images/s", "× fp32"], rows)
        out += [
            "",
            f"channels_last: {r['channels_last_speedup']['bf16']:.2f}× with bf16, "
            f"{r['channels_last_speedup']['fp32']:.2f}× with fp32; fastest: **{r['fastest']}**.",
            "",
        ]
    for label, path in (
        ("validation (export stage)", root / "reports" / "int8.json"),
        ("test (evaluate stage)", root / "reports" / "metrics_onnx-int8.json"),
    ):
        if not path.exists():
            continue
        data = read_json(path)
        parity = data.get("parity") or data.get("test", {}).get("parity")
        if not parity:
            continue
        out += [
            f"**INT8 parity, {label}** (`{path.relative_to(root)}`): ΔDice {parity['dice_delta']:.4f}, "
            f"ΔAUROC {parity['auroc_delta']:.4f}, "
            f"same decision on {100 * parity['same_decision_rate']:.2f} % "
            f"of {parity['tiles']} tiles ({parity['changed_decisions']} changed) → parity "
            f"{'holds' if parity['holds'] else 'fails'}"
            + (
                f"; {data['recommended_precision'].upper()} recommended: {data['reason']}"
                if "recommended_precision" in data
                else ""
            )
            + ".",
            "",
        ]
    return "\n".join(out).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------ README

GENERATORS: dict[str, Callable[[Path], str]] = {
    "results": results_table,
    "performance": performance_table,
    "lite0": lite0_detail,
}
# the blocks the README must have (docs/PERFORMANCE.md has the ``lite0`` block)
README_BLOCKS = ("results", "performance")


def render(text: str, root: Path, required: Sequence[str] = README_BLOCKS) -> str:
    """``text`` with every known marker block regenerated; unknown blocks, or missing ``required``
    ones, are an error."""
    found = [m.group("name") for m in MARKER.finditer(text)]
    unknown = sorted(set(found) - set(GENERATORS))
    missing = sorted(set(required) - set(found))
    if unknown or missing:
        raise ValueError(
            f"README markers: unknown {unknown}, missing {missing} "
            "(<!-- BEGIN name --> ... <!-- END name -->)"
        )
    return MARKER.sub(lambda m: m.group(1) + GENERATORS[m.group("name")](root) + m.group(4), text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", nargs="?", default="README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs; write nothing")
    parser.add_argument("--root", default=None, help="repository root (default: the README's folder)")
    parser.add_argument("--save-seed", metavar="OUT", help="bundle the current run into OUT and exit")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    root = Path(args.root) if args.root else readme.resolve().parent
    if not args.root and readme.name != "README.md":  # e.g. docs/PERFORMANCE.md: the repository above it
        root = next((p for p in readme.resolve().parents if (p / "pyproject.toml").exists()), root)
    if args.save_seed:
        print(f"wrote {save_seed(root, Path(args.save_seed))}")
        return 0
    text = readme.read_text(encoding="utf-8")
    new = render(text, root, README_BLOCKS if readme.name == "README.md" else ())
    if args.check:
        if new != text:
            print(f"{readme} is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        write_text_atomic(readme, new)
    print(f"{readme}: {'updated' if new != text else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
