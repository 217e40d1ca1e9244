"""docs/PERFORMANCE.md's ``lite0`` block: the EfficientNet-Lite0 model's detail tables (issue #14),
one function per table, each reading one result file and returning its markdown lines (none when
the file is not committed). ``SECTIONS`` is the block's order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtdefect.docs_tables.common import benchmark_model, load_span, opened, read_json, table


def in_process(root: Path) -> list[str]:
    """``bench_model.py``: ``Predictor.predict`` per backend on one 270×324 tile and real tiles."""
    r = opened(root, "bench_model_int8.json")
    if not r:
        return []
    out = [
        f"**In process** (`bench_model.py` → `bench_model_int8.json`, {benchmark_model(r, None)}, "
        f"`{r['model']['source']}`, "
        f"{load_span(r)}): `Predictor.predict`, calls interleaved between the backends.",
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
    return [*out, ""]


def http(root: Path, precision: str) -> list[str]:
    """``bench_http.py``: a real ``bentoml serve`` at one precision, single requests and concurrency."""
    r = opened(root, f"bench_http_{precision}.json")
    if not r:
        return []
    out = [
        f"**HTTP, {precision.upper()}** (`bench_http.py --backend {r['server_env'].get('MT_BACKEND')}` → "
        f"`bench_http_{precision}.json`, "
        f"{benchmark_model(r, None)}, {load_span(r)}): a real `bentoml serve`, loopback, keep-alive.",
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
    header = [
        "real tiles, concurrency",
        "ok",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "in-process img/s",
        "HTTP / in-process",
    ]
    return [*out, *table(header, rows), ""]


def _cost_row(p: dict[str, Any], fp32: dict[tuple[int, int], dict[str, Any]]) -> list[str]:
    size = f"{p['width']}×{p['height']}"
    if "error" in p:
        return [size, f"{p['megapixels']:.2f}", "failed", "", "", "", "", ""]
    f = fp32.get((p["width"], p["height"]), {})
    return [
        size,
        f"{p['megapixels']:.2f}",
        f"{p['latency']['p50_ms']:,.1f}",
        f"{p['ms_per_megapixel']:,.0f}",
        f"{p['peak_rss_mib']:,.0f}",
        f"{f['latency']['p50_ms']:,.1f}" if f else "—",
        f"{f['peak_rss_mib']:,.0f}" if f else "—",
        f"{f['latency']['p50_ms'] / p['latency']['p50_ms']:.2f}×" if f else "—",
    ]


def cost_curve(root: Path) -> list[str]:
    """``bench_cost.py``: latency and peak memory by image size, INT8 beside FP32, and the line fit."""
    r = opened(root, "bench_cost.json")
    if not r:
        return []
    cap = r["pixel_cap"]
    out = [
        f"**Cost curve** (`bench_cost.py` → `bench_cost.json`, {benchmark_model(r, None)}, {load_span(r)}): "
        "one child process per point, peak RSS (VmHWM) reset after loading; pixel cap `MT_MAX_PIXELS` = "
        f"{cap['MT_MAX_PIXELS_default']:,} "
        f"px ({cap['side_at_cap']}²): larger uploads are refused with 413 before decoding.",
        "",
    ]
    fp32 = {(p["width"], p["height"]): p for p in r["curves"].get("onnx", []) if "error" not in p}
    rows = [_cost_row(p, fp32) for p in r["curves"].get("onnx-int8", [])]
    header = [
        "size (W×H)",
        "MP",
        "INT8 p50 ms",
        "INT8 ms/MP",
        "INT8 peak RSS MiB",
        "FP32 p50 ms",
        "FP32 peak RSS MiB",
        "INT8 speed-up",
    ]
    out += table(header, rows)
    fits = [
        f"{b}: {v['intercept_ms']:.1f} ms + {v['ms_per_megapixel']:.0f} ms/MP (largest residual "
        f"{100 * v['max_relative_residual']:.0f} %)"
        for b, v in r.get("linear_fit", {}).items()
        if v
    ]
    if fits:
        out += ["", "Least-squares line through the points: " + "; ".join(fits) + "."]
    return [*out, ""]


def train_precision(root: Path) -> list[str]:
    """``bench_train_precision.py``: one training step in fp32/bf16, channels_last on and off."""
    r = opened(root, "bench_train_precision.json")
    if not r:
        return []
    m = r["model"]
    out = [
        f"**Training step** (`bench_train_precision.py` → `bench_train_precision.json`, Unet {m['encoder']}, "
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
    return [
        *out,
        "",
        f"channels_last: {r['channels_last_speedup']['bf16']:.2f}× with bf16, "
        f"{r['channels_last_speedup']['fp32']:.2f}× with fp32; fastest: **{r['fastest']}**.",
        "",
    ]


def int8_parity(root: Path) -> list[str]:
    """The pipeline's INT8 parity verdicts (export stage on validation, evaluate stage on test)."""
    out: list[str] = []
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
        recommended = (
            f"; {data['recommended_precision'].upper()} recommended: {data['reason']}"
            if "recommended_precision" in data
            else ""
        )
        out += [
            f"**INT8 parity, {label}** (`{path.relative_to(root)}`): ΔDice {parity['dice_delta']:.4f}, "
            f"ΔAUROC {parity['auroc_delta']:.4f}, "
            f"same decision on {100 * parity['same_decision_rate']:.2f} % "
            f"of {parity['tiles']} tiles ({parity['changed_decisions']} changed) → parity "
            f"{'holds' if parity['holds'] else 'fails'}" + recommended + ".",
            "",
        ]
    return out


SECTIONS: list[Callable[[Path], list[str]]] = [
    in_process,
    lambda root: http(root, "int8"),
    lambda root: http(root, "fp32"),
    cost_curve,
    train_precision,
    int8_parity,
]


def lite0_detail(root: Path) -> str:
    """docs/PERFORMANCE.md's tables of the EfficientNet-Lite0 model (issue #14), from the same files."""
    out = [
        "Generated by `make docs` from `benchmarks/results/` (`bench_model_int8.json`,"
        " `bench_http_int8.json`, `bench_http_fp32.json`, `bench_cost.json`, `bench_train_precision.json`),"
        " `reports/int8.json` and"
        " `reports/metrics_onnx-int8.json`; every table names its script, result file, model and the machine"
        " load (1-minute average at start → end).",
        "",
    ]
    for section in SECTIONS:
        out += section(root)
    return "\n".join(out).rstrip("\n") + "\n"
