"""The README's results and performance tables, generated from the files the pipeline and the
benchmarks write, so the numbers in the README cannot drift from them (``make docs``).

    python -m mtdefect.docs_tables README.md            # rewrite the tables between the markers
    python -m mtdefect.docs_tables README.md --check    # exit 1 if the README is not what this writes
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
        "hardware": "same",
        "glob": "reports/seeds/*.json",
    },
]

# Models of benchmark results written before the benchmarks recorded the network: the default
# encoder of conf/model/unet.yaml at the commit that added the file (resnet10t until 975280a, which
# made resnet18 the default; bench_flips.json was measured on the committed resnet18 model).
UNRECORDED = "resnet10t"


# Performance: one dict per target; "files" are benchmark results (in benchmarks/results/),
# "value" extracts the measurement from one result, "met" judges it (None: no target).
PERFORMANCE_ROWS: list[dict[str, Any]] = [
    {
        "target": "ONNX Runtime ≥ 1.3× eager PyTorch (paired median: real tiles / one 270×324 tile)",
        "files": [
            "bench_model.json",
            "bench_model_rerun.json",
            "bench_model_resnet18.json",
            "bench_model_loaded.json",
        ],
        "value": lambda r: (
            r["ratios"]["real"]["onnx_over_torch_paired_median"],
            r["ratios"]["fixed"]["onnx_over_torch_paired_median"],
        ),
        "show": lambda v: f"{v[0]:.2f}× / {v[1]:.2f}×",
        "met": lambda v: min(v) >= 1.3,
    },
    {
        "target": "in-process `predict()` p50, ONNX Runtime (one 270×324 tile / 40 real tiles); no target",
        "files": ["bench_model.json", "bench_model_rerun.json", "bench_model_resnet18.json"],
        "value": lambda r: (r["fixed_270x324"]["onnx"]["p50_ms"], r["real"]["onnx"]["p50_ms"]),
        "show": lambda v: f"{v[0]:.1f} ms / {v[1]:.1f} ms",
        "met": None,
    },
    {
        "target": "test-time flips: p50 per real tile, ONNX Runtime, by flip set (× none); no target",
        "files": ["bench_flips.json"],
        "model_if_unrecorded": "resnet18",
        "value": lambda r: [
            ("+".join(x["flips"]) or "none", x["latency_ms"]["p50_ms"], x["median_ratio"])
            for x in r["results"]
        ],
        "show": lambda v: " → ".join(f"{name} {ms:.1f} ms ({ratio:.2f}×)" for name, ms, ratio in v),
        "met": None,
    },
    {
        "target": "single request, 270×324 tile, `/detect` p50 ≤ 60 ms end to end",
        "files": ["bench_http.json", "bench_http_rerun.json", "bench_http_loaded.json"],
        "value": lambda r: r["single_270x324"]["/detect"]["p50_ms"],
        "show": lambda v: f"{v:.1f} ms",
        "met": lambda v: v <= 60.0,
    },
    {
        "target": "HTTP at concurrency 4 ≥ 0.9× in-process ONNX Runtime (requests/s over images/s)",
        "files": ["bench_http.json", "bench_http_rerun.json", "bench_http_loaded.json"],
        "value": lambda r: r["levels"]["4"]["ratio_to_inprocess"],
        "show": lambda v: f"{v:.2f}×",
        "met": lambda v: v >= 0.9,
    },
    {
        "target": "zero errors at concurrency 16",
        "files": ["bench_http.json", "bench_http_rerun.json", "bench_http_loaded.json"],
        "value": lambda r: r["levels"]["16"]["errors"],
        "show": lambda v: f"{v} errors",
        "met": lambda v: v == 0,
    },
    {
        "target": "RSS growth ≤ 10 % from 100 to 5,000 requests (and KiB/request after 1,500)",
        "files": ["bench_http.json", "bench_http_rerun.json", "bench_http_loaded.json"],
        "value": lambda r: (r["rss"]["growth_100_to_end"], _late_rss_slope(r["rss"]["samples"], 1500)),
        "show": lambda v: f"{v[0] * 100:+.1f} % ({v[1]:.1f} KiB/request)",
        "met": lambda v: v[0] <= 0.10,
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

MARKER = re.compile(r"(<!-- BEGIN (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.DOTALL)


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
        " params in `dvc.lock` and `reports/seeds/*.json`; test split unless marked val."
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
            path = results / name
            if not path.exists():
                continue
            result = read_json(path)
            value = spec["value"](result)
            load = result.get("machine", {}).get("load_average_at_start", ["?"])[0]
            model = benchmark_model(result, spec.get("model_if_unrecorded"))
            lines.append(f"{spec['show'](value)} · {model} · `{name}` (load {load})")
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


# ------------------------------------------------------------------------------------------ README

GENERATORS: dict[str, Callable[[Path], str]] = {"results": results_table, "performance": performance_table}


def render(text: str, root: Path) -> str:
    """``text`` with every known marker block regenerated; unknown or missing blocks are an error."""
    found = [m.group("name") for m in MARKER.finditer(text)]
    unknown = sorted(set(found) - set(GENERATORS))
    missing = sorted(set(GENERATORS) - set(found))
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
    if args.save_seed:
        print(f"wrote {save_seed(root, Path(args.save_seed))}")
        return 0
    text = readme.read_text(encoding="utf-8")
    new = render(text, root)
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
