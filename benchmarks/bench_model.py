"""In-process inference speed: ONNX Runtime FP32 vs INT8 (or eager PyTorch) through the same ``Predictor``.

    python benchmarks/bench_model.py [--model-dir DIR] [--n 40] [--threads 2] [--fixed-reps 30]

Both backends see the same images with the same preprocessing (native resolution padded to
stride 32); calls are interleaved image by image (the backend that goes first alternates), so
a change in machine load hits both alike. For every call the script also times the stages of
``predict()`` separately (preprocess → network → restore → postprocess) in a second,
interleaved pass, so the network-only time and the overhead around it are visible.

By default FP32 (``onnx``) against INT8 (``onnx-int8``; made here from training tiles when the model
folder has none); ``--backends torch,onnx`` compares eager PyTorch, ``--threads 1,2`` thread counts.
Writes benchmarks/results/bench_model_<question>.json, one file per question (``--result-name``
overrides): ``bench_model_int8`` (the default backends), ``bench_model_torch_vs_onnx`` (with torch),
``bench_model_threads`` (more than one thread count).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402
from mtdefect.inference.postprocess import postprocess, restore_probability  # noqa: E402

STAGES = ("preprocess", "network", "restore", "postprocess")


class Config:
    """One (backend, threads) pairing; torch's thread count is process-wide, so it is set per call."""

    def __init__(self, model_dir: Path, backend: str, threads: int | None) -> None:
        self.backend, self.threads = backend, threads
        self.predictor = Predictor.from_dir(model_dir, backend=backend, threads=threads)
        self.name = f"{self.predictor.backend}" + (f" ({threads} thr)" if threads else "")
        self._torch_threads = None
        if backend == "torch":
            import torch

            self._torch_threads = threads or torch.get_num_threads()

    def activate(self) -> None:
        if self._torch_threads is not None:
            import torch

            if torch.get_num_threads() != self._torch_threads:
                torch.set_num_threads(self._torch_threads)

    def predict_ms(self, gray: np.ndarray) -> float:
        self.activate()
        start = time.perf_counter()
        self.predictor.predict(gray)
        return (time.perf_counter() - start) * 1000.0

    def stages_ms(self, gray: np.ndarray) -> dict[str, float]:
        """The body of Predictor.predict, stage by stage (same functions, same order)."""
        self.activate()
        p = self.predictor
        t0 = time.perf_counter()
        batch, geometry = p.network_input(gray)  # test-time flips included
        t1 = time.perf_counter()
        logits, tile_logits = p.runner(batch)
        t2 = time.perf_counter()
        probability = restore_probability(p.merge_views(logits), geometry)
        t3 = time.perf_counter()
        prediction = postprocess(probability, p.settings.postprocess, p.class_scores(tile_logits))
        t4 = time.perf_counter()
        return {
            "preprocess": (t1 - t0) * 1e3,
            "network": (t2 - t1) * 1e3,
            "restore": (t3 - t2) * 1e3,
            "postprocess": (t4 - t3) * 1e3,
            "regions": float(len(prediction.regions)),
        }


def run_interleaved(configs: list[Config], images: list[np.ndarray], rounds: int) -> dict[str, dict]:
    """predict() and the staged pass, image by image, all configs per image, rotating who goes first."""
    out = {c.name: {"predict": [], "stages": {s: [] for s in (*STAGES, "regions")}} for c in configs}
    k = 0
    for _ in range(rounds):
        for gray in images:
            order = configs[k % len(configs) :] + configs[: k % len(configs)]
            k += 1
            for c in order:
                out[c.name]["predict"].append(c.predict_ms(gray))
            for c in reversed(order):
                for stage, ms in c.stages_ms(gray).items():
                    out[c.name]["stages"][stage].append(ms)
    return out


def summarise(raw: dict[str, dict], n_images: int) -> dict[str, dict]:
    summary = {}
    for name, r in raw.items():
        lat = C.latency_summary(r["predict"])
        net = C.latency_summary(r["stages"]["network"])
        stage_means = {s: statistics.fmean(r["stages"][s]) for s in STAGES}
        staged_total = sum(stage_means.values())
        summary[name] = {
            **lat,
            "images_per_s": 1000.0 * len(r["predict"]) / sum(r["predict"]),
            "network_p50_ms": net["p50_ms"],
            "network_mean_ms": net["mean_ms"],
            "network_images_per_s": 1000.0 / net["mean_ms"],
            "stage_mean_ms": stage_means,
            "overhead_share": 1.0 - stage_means["network"] / staged_total,
            "regions_mean": statistics.fmean(r["stages"]["regions"]),
            "distinct_images": n_images,
        }
    return summary


def print_section(title: str, summary: dict[str, dict]) -> None:
    print(f"\n### {title}\n")
    rows = []
    for name, s in summary.items():
        st = s["stage_mean_ms"]
        rows.append(
            [
                name,
                s["n"],
                s["images_per_s"],
                s["p50_ms"],
                s["p99_ms"],
                s["network_p50_ms"],
                st["preprocess"],
                st["restore"] + st["postprocess"],
                f"{100 * s['overhead_share']:.1f}%",
                f"{s['regions_mean']:.0f}",
            ]
        )
    print(
        C.table(
            [
                "backend",
                "calls",
                "img/s",
                "p50 ms",
                "p99 ms",
                "net-only p50 ms",
                "pre ms",
                "restore+post ms",
                "non-network share",
                "regions/img",
            ],
            rows,
        )
    )


def int8_ratios(summary: dict[str, dict], raw: dict[str, dict]) -> dict[str, float]:
    """INT8 (onnx-int8) over FP32 (onnx) ONNX Runtime, same run, calls interleaved: ratio of p50s,
    of throughputs, and the median of per-call ratios (load drift cancels)."""
    fp32 = [n for n in summary if n.split(" ")[0] == "onnx"]
    int8 = [n for n in summary if n.split(" ")[0] == "onnx-int8"]
    if not fp32 or not int8:
        return {}
    f, i = fp32[0], int8[0]
    paired = [a / b for a, b in zip(raw[f]["predict"], raw[i]["predict"])]
    paired_net = [a / b for a, b in zip(raw[f]["stages"]["network"], raw[i]["stages"]["network"])]
    return {
        "int8_over_fp32_p50": summary[f]["p50_ms"] / summary[i]["p50_ms"],
        "int8_over_fp32_images_per_s": summary[i]["images_per_s"] / summary[f]["images_per_s"],
        "int8_over_fp32_paired_median": statistics.median(paired),
        "int8_over_fp32_network_paired_median": statistics.median(paired_net),
    }


def ratios(summary: dict[str, dict], raw: dict[str, dict]) -> dict[str, float]:
    """ONNX Runtime over eager PyTorch: ratio of throughputs, and the median of per-call ratios
    (each image's torch call ran right next to its ONNX call, so load drift cancels)."""
    onnx = [n for n in summary if n.split(" ")[0] == "onnx"]
    torch_ = [n for n in summary if n.startswith("torch")]
    if not onnx or not torch_:
        return {}
    o, t = onnx[0], torch_[0]
    paired = [a / b for a, b in zip(raw[t]["predict"], raw[o]["predict"])]
    paired_net = [a / b for a, b in zip(raw[t]["stages"]["network"], raw[o]["stages"]["network"])]
    return {
        "onnx_over_torch_images_per_s": summary[o]["images_per_s"] / summary[t]["images_per_s"],
        "onnx_over_torch_network_only": summary[t]["network_mean_ms"] / summary[o]["network_mean_ms"],
        "onnx_over_torch_paired_median": statistics.median(paired),
        "onnx_over_torch_network_paired_median": statistics.median(paired_net),
    }


def default_result_name(backends: str, threads: str | None) -> str:
    """The question a run answers names its result: thread counts, eager PyTorch vs ONNX, or INT8."""
    if threads and "," in threads:
        return "bench_model_threads"
    return "bench_model_torch_vs_onnx" if "torch" in backends.split(",") else "bench_model_int8"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="model folder (settings.json, weights.safetensors[, model.onnx])")
    parser.add_argument("--n", type=int, default=40, help="distinct real images (default 40)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the real images (default 1)")
    parser.add_argument("--fixed-reps", type=int, default=30, help="calls on the 270x324 tile (default 30)")
    parser.add_argument(
        "--threads",
        default=None,
        help="inference threads; comma list to compare (e.g. 1,2); default: library default (all cores)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", default="onnx,onnx-int8", help="comma list (torch, onnx, onnx-int8)")
    parser.add_argument(
        "--result-name",
        default=None,
        help="results/<name>.json (default: bench_model_threads / _torch_vs_onnx / _int8)",
    )
    args = parser.parse_args(argv)
    args.result_name = args.result_name or default_result_name(args.backends, args.threads)

    info = C.machine_info()
    work = C.workdir("model")
    model_dir, model_source = C.resolve_model_dir(args.model_dir, work)
    if "onnx-int8" in args.backends.split(",") and C.ensure_int8(model_dir):
        model_source += " (INT8 quantized here)"
    thread_list = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    configs = [Config(model_dir, b, t) for t in thread_list for b in args.backends.split(",")]

    items = C.real_image_bytes(args.n)
    t0 = time.perf_counter()
    images = C.decode_all(items)
    decode_ms = (time.perf_counter() - t0) * 1000 / len(images)
    fixed = C.fixed_tile()
    shapes = np.array([g.shape for g in images])

    print(f"# bench_model — {C.describe_machine(info)}")
    print(f"model: {model_source}; net {configs[0].predictor.settings.net}")
    print(
        f"real images: {len(images)} from {C.DEFAULT_ZIP.name} (HxW median {np.median(shapes, 0).tolist()}, "
        f"min {shapes.min(0).tolist()}, max {shapes.max(0).tolist()}); JPEG decode {decode_ms:.2f} ms/img"
    )

    for c in configs:  # warm-up: first calls allocate, JIT-pick kernels, page weights in
        for _ in range(args.warmup):
            c.predict_ms(fixed)
            c.predict_ms(images[0])
    gc.collect()

    raw_real = run_interleaved(configs, images, args.rounds)
    raw_fixed = run_interleaved(configs, [fixed] * args.fixed_reps, 1)
    real, fixed_summary = summarise(raw_real, len(images)), summarise(raw_fixed, 1)

    print_section(f"real test images ({len(images)} distinct, native size padded to 32)", real)
    print_section(
        f"fixed tile {C.FIXED_WH[0]}x{C.FIXED_WH[1]} (WxH, padded to 288x352), {args.fixed_reps} calls",
        fixed_summary,
    )
    r_real, r_fixed = ratios(real, raw_real), ratios(fixed_summary, raw_fixed)
    i_real, i_fixed = int8_ratios(real, raw_real), int8_ratios(fixed_summary, raw_fixed)
    if i_fixed:
        print("\nINT8 speed-up over FP32 ONNX Runtime (target >= 1.6x), same run:")
        for label, r in (("real tiles", i_real), ("270x324", i_fixed)):
            print(
                f"  {label:10s} p50 ratio {r['int8_over_fp32_p50']:.2f}x, paired median "
                f"{r['int8_over_fp32_paired_median']:.2f}x | network only paired median "
                f"{r['int8_over_fp32_network_paired_median']:.2f}x"
            )
    if r_real:
        print("\nONNX Runtime speed-up over eager PyTorch (target >= 1.3x):")
        for label, r in (("real tiles", r_real), ("270x324", r_fixed)):
            print(
                f"  {label:10s} predict(): throughput ratio {r['onnx_over_torch_images_per_s']:.2f}x, "
                f"paired median {r['onnx_over_torch_paired_median']:.2f}x | network only: "
                f"{r['onnx_over_torch_network_only']:.2f}x, paired median "
                f"{r['onnx_over_torch_network_paired_median']:.2f}x"
            )
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(
                model_dir,
                model_source,
                backends={
                    c.name: {
                        "backend": c.predictor.backend,
                        "precision": C.PRECISION.get(c.predictor.backend),
                    }
                    for c in configs
                },
            ),
            "args": vars(args),
            "images": {"n": len(images), "members": [m for m, _ in items], "decode_ms_mean": decode_ms},
            "real": real,
            "fixed_270x324": fixed_summary,
            "ratios": {"real": r_real, "fixed": r_fixed},
            "int8_ratios": {"real": i_real, "fixed": i_fixed},
        },
    )
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
