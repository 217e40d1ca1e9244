"""Cost curve: latency and peak memory of ``Predictor.predict`` against image size, FP32 and INT8.

    python benchmarks/bench_cost.py [--model-dir DIR] [--sizes 270x324,632x403,1024x1024,2048x2048,4096x4096]

Each (backend, size) runs in a fresh child process whose peak RSS (VmHWM) is reset after loading the
model, so the peak belongs to that size's calls alone: load the model, one warm-up call, then
``--reps`` timed calls (fewer for the large sizes, see ``reps_for``) on a real tile resized to the
size. Reported per point: p50 latency, ms per megapixel, the process's RSS after loading, its peak RSS
and the growth between them (the
working memory of one call). The service's pixel cap (``MT_MAX_PIXELS``, default 4096²) is
recorded with the curve: sizes above it are refused with 413 before decoding.

Writes benchmarks/results/bench_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_SIZES = "270x324,632x403,1024x1024,2048x2048,4096x4096"


def reps_for(pixels: int, reps: int) -> int:
    """Up to ``reps`` calls, fewer when one call is long (≥ 4 MP: 5, ≥ 16 MP: 3)."""
    if pixels >= 16_000_000:
        return min(reps, 3)
    if pixels >= 4_000_000:
        return min(reps, 5)
    return reps


def vm_hwm_mib() -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(model_dir: str, backend: str, width: int, height: int, reps: int, threads: int | None) -> dict:
    """Runs in its own process: one (backend, size) point."""
    import numpy as np
    from PIL import Image

    from mtdefect.inference import Predictor

    def rss_mib() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    predictor = Predictor.from_dir(model_dir, backend=backend, threads=threads)
    tile = C.fixed_tile()
    gray = np.asarray(Image.fromarray(tile).resize((width, height), Image.BILINEAR), dtype=np.uint8)
    loaded = rss_mib()
    peak_startup = vm_hwm_mib()
    reset_peak()  # the peak from here on belongs to the calls (imports, the dataset zip scan left out)
    start = time.perf_counter()
    predictor.predict(gray)  # warm-up (first-call allocations count in the peak: the service pays them too)
    warmup_ms = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        predictor.predict(gray)
        times.append((time.perf_counter() - start) * 1000)
    peak = vm_hwm_mib()
    return {
        "backend": predictor.backend,
        "precision": C.PRECISION.get(predictor.backend),
        "width": width,
        "height": height,
        "megapixels": width * height / 1e6,
        "reps": reps,
        "warmup_ms": warmup_ms,
        "latency": C.latency_summary(times),
        "ms_per_megapixel": float(np.median(times)) / (width * height / 1e6),
        "rss_loaded_mib": loaded,
        "peak_rss_startup_mib": peak_startup,
        "peak_rss_mib": peak,
        "peak_growth_mib": peak - loaded,
    }


def fit_linear(points: list[dict]) -> dict:
    """Least squares latency = a + b * megapixels over the points (is the cost linear in pixels?)."""
    import numpy as np

    x = np.array([p["megapixels"] for p in points])
    y = np.array([p["latency"]["p50_ms"] for p in points])
    if len(x) < 2:
        return {}
    b, a = np.polyfit(x, y, 1)
    predicted = a + b * x
    return {
        "intercept_ms": float(a),
        "ms_per_megapixel": float(b),
        "max_relative_residual": float(np.max(np.abs(predicted - y) / y)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="model folder (default: the trained one, else random weights)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of WIDTHxHEIGHT")
    parser.add_argument("--backends", default="onnx-int8,onnx")
    parser.add_argument("--reps", type=int, default=15, help="timed calls per point (fewer for large sizes)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    parser.add_argument("--result-name", default="bench_cost")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(**spec)))
        return 0

    info = C.machine_info()
    work = C.workdir("cost")
    model_dir, model_source = C.resolve_model_dir(args.model_dir, work)
    if "onnx-int8" in args.backends.split(",") and C.ensure_int8(model_dir):
        model_source += " (INT8 quantized here)"
    from mtdefect.serving.config import ServeConfig

    cap = ServeConfig().max_pixels
    print(f"# bench_cost — {C.describe_machine(info)}")
    print(f"model: {model_source}; pixel cap (MT_MAX_PIXELS default) {cap:,} px")
    curves: dict[str, list[dict]] = {}
    for backend in args.backends.split(","):
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            spec = {
                "model_dir": str(model_dir),
                "backend": backend,
                "width": width,
                "height": height,
                "reps": reps_for(width * height, args.reps),
                "threads": args.threads,
            }
            load_before = C.load_average()
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                point = {
                    "backend": backend,
                    "width": width,
                    "height": height,
                    "megapixels": width * height / 1e6,
                    "error": (out.stderr.strip().splitlines() or ["?"])[-1],
                    "returncode": out.returncode,
                }
            else:
                point = json.loads(out.stdout.strip().splitlines()[-1])
            point["load_average_before"], point["load_average_after"] = load_before, C.load_average()
            point["over_pixel_cap"] = width * height > cap
            curves.setdefault(backend, []).append(point)
            if "error" in point:
                print(f"  {backend:9s} {size:>10s}: FAILED {point['error']}", flush=True)
            else:
                print(
                    f"  {backend:9s} {size:>10s}: p50 {point['latency']['p50_ms']:9.1f} ms "
                    f"({point['ms_per_megapixel']:.1f} ms/MP), peak RSS {point['peak_rss_mib']:.0f} MiB "
                    f"(+{point['peak_growth_mib']:.0f} over loaded)",
                    flush=True,
                )
    fits = {b: fit_linear([p for p in pts if "error" not in p]) for b, pts in curves.items()}
    ratio = {}
    if "onnx" in curves and "onnx-int8" in curves:
        for f, i in zip(curves["onnx"], curves["onnx-int8"]):
            if "error" not in f and "error" not in i:
                ratio[f"{f['width']}x{f['height']}"] = f["latency"]["p50_ms"] / i["latency"]["p50_ms"]
    rows = []
    for backend, pts in curves.items():
        for p in pts:
            if "error" not in p:
                rows.append(
                    [
                        backend,
                        f"{p['width']}x{p['height']}",
                        p["megapixels"],
                        p["latency"]["p50_ms"],
                        p["ms_per_megapixel"],
                        p["peak_rss_mib"],
                        p["peak_growth_mib"],
                    ]
                )
    print()
    print(C.table(["backend", "size", "MP", "p50 ms", "ms/MP", "peak RSS MiB", "growth MiB"], rows))
    for backend, fit in fits.items():
        if fit:
            print(
                f"{backend}: latency ≈ {fit['intercept_ms']:.1f} ms + {fit['ms_per_megapixel']:.1f} ms/MP "
                f"(largest relative residual {fit['max_relative_residual']:.0%})"
            )
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(model_dir, model_source, backends=args.backends.split(",")),
            "args": vars(args),
            "pixel_cap": {
                "MT_MAX_PIXELS_default": cap,
                "side_at_cap": int(cap**0.5),
                "note": "larger images are refused (413) from the header, before decoding",
            },
            "curves": curves,
            "linear_fit": fits,
            "int8_over_fp32_p50": ratio,
        },
    )
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
