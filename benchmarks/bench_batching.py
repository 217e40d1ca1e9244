"""Does batching pay on this machine? In-process batch sweep + BentoML adaptive batching over HTTP.

    python benchmarks/bench_batching.py [--model-dir DIR] [--level-seconds 15] [--reps 2]

A. In process (ONNX Runtime, same thread settings as the service):
   - the 270x324 tile repeated, batch 1/2/4/8: network ms per image (batching's best case:
     no padding waste);
   - real tiles in groups of b, edge-padded to the group's largest size (what a batching server
     must do at native resolution): end-to-end ms per image (pre + network + post) and the share of
     network pixels that are padding; plus how much the extra padding changes the probabilities.
B. Over HTTP, three servers up at once (idle ones cost no CPU), load interleaved server by server:
   - benchmarks/batched_service.py with adaptive batching (MT_BENCH_BATCHING=1),
   - the same two-service topology without batching (MT_BENCH_BATCHING=0),
   - the production service.py (one process, one request per inference);
   /detect on real tiles at concurrency 4 and 16: req/s, p50/p99, errors, observed batch sizes.
Writes benchmarks/results/bench_batching.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _http as H  # noqa: E402
from batched_service import batched_probabilities, infer_batch  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402
from mtdefect.inference.postprocess import postprocess  # noqa: E402
from mtdefect.inference.preprocess import preprocess  # noqa: E402


def fixed_sweep(predictor: Predictor, gray: np.ndarray, sizes: list[int], reps: int) -> dict[int, float]:
    single, _ = preprocess(gray, predictor.settings.preprocess)
    batches = {b: np.ascontiguousarray(np.concatenate([single] * b)) for b in sizes}
    for b in sizes:
        predictor.runner(batches[b])  # warm: ORT plans memory per input shape
    per_image: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(reps):
        for b in sizes if r % 2 == 0 else sizes[::-1]:
            t0 = time.perf_counter()
            predictor.runner(batches[b])
            per_image[b].append((time.perf_counter() - t0) * 1000 / b)
    return {b: statistics.median(v) for b, v in per_image.items()}


def real_sweep(
    predictor: Predictor, images: list[np.ndarray], sizes: list[int], reps: int
) -> dict[int, dict]:
    """Whole answers (pre + network + post) for groups of b real tiles, padded to a common size."""
    settings = predictor.settings
    out: dict[int, dict] = {}
    timings: dict[int, list[float]] = {b: [] for b in sizes}
    waste: dict[int, float] = {}
    for b in sizes:
        n = len(images) // b * b
        groups = [images[i : i + b] for i in range(0, n, b)]
        padded_px = real_px = 0
        for g in groups:
            shapes = [preprocess(x, settings.preprocess)[0].shape[-2:] for x in g]
            hmax, wmax = max(s[0] for s in shapes), max(s[1] for s in shapes)
            padded_px += hmax * wmax * len(g)
            real_px += sum(s[0] * s[1] for s in shapes)
        waste[b] = 1 - real_px / padded_px
        infer_batch(predictor, groups[0])  # warm
    for r in range(reps):
        for b in sizes if r % 2 == 0 else sizes[::-1]:
            n = len(images) // b * b
            t0 = time.perf_counter()
            for i in range(0, n, b):
                infer_batch(predictor, images[i : i + b])
            timings[b].append((time.perf_counter() - t0) * 1000 / n)
    for b in sizes:
        out[b] = {"ms_per_image": statistics.median(timings[b]), "padding_share": waste[b]}
    return out


def padding_effect(predictor: Predictor, images: list[np.ndarray], b: int) -> dict:
    """Max |Δ probability| and mask pixel flips: batched (common padding) vs one image at a time."""
    settings = predictor.settings
    max_delta, flips, pixels = 0.0, 0, 0
    for i in range(0, len(images) // b * b, b):
        group = images[i : i + b]
        batched, _ = batched_probabilities(predictor, group)
        for j, p_batched in enumerate(batched):
            p_single = predictor.probability(group[j])
            max_delta = max(max_delta, float(np.abs(p_batched - p_single).max()))
            m1 = postprocess(p_batched, settings.postprocess).mask
            m2 = postprocess(p_single, settings.postprocess).mask
            flips += int((m1 != m2).sum())
            pixels += m1.size
    return {"batch": b, "max_abs_prob_delta": max_delta, "mask_pixel_flips": flips, "pixels": pixels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions (in-process and HTTP)")
    parser.add_argument("--fixed-reps", type=int, default=8)
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--level-seconds", type=float, default=15.0)
    parser.add_argument("--level-requests", type=int, default=400)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-latency-ms", type=int, default=10000)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--result-name", default="bench_batching", help="results/<name>.json")
    args = parser.parse_args(argv)

    info = C.machine_info()
    work = C.workdir("batching")
    model_dir, model_source = C.resolve_model_dir(args.model_dir, work)
    predictor = Predictor.from_dir(model_dir, backend="onnx")
    sizes = [int(s) for s in args.sizes.split(",")]
    items = C.real_image_bytes(args.n_images)
    images = C.decode_all(items)
    print(f"# bench_batching — {C.describe_machine(info)}")
    print(f"model: {model_source}")

    fixed = fixed_sweep(predictor, C.fixed_tile(), sizes, args.fixed_reps)
    real = real_sweep(predictor, images, sizes, args.reps)
    effect = padding_effect(predictor, images, max(sizes))
    print("\n### A. in process, ONNX Runtime\n")
    print(
        C.table(
            [
                "batch",
                "270x324 network ms/img",
                "vs batch 1",
                "real tiles e2e ms/img",
                "vs batch 1",
                "padding share",
            ],
            [
                [
                    b,
                    fixed[b],
                    f"{fixed[sizes[0]] / fixed[b]:.2f}x",
                    real[b]["ms_per_image"],
                    f"{real[sizes[0]]['ms_per_image'] / real[b]['ms_per_image']:.2f}x",
                    f"{100 * real[b]['padding_share']:.0f}%",
                ]
                for b in sizes
            ],
        )
    )
    print(
        f"\ncommon padding at batch {effect['batch']}: "
        f"max |Δ probability| {effect['max_abs_prob_delta']:.2e}, "
        f"{effect['mask_pixel_flips']} of {effect['pixels']} mask pixels differ"
    )

    http: dict[str, dict] = {}
    if not args.skip_http:
        home = work / "bentoml"
        tag = H.store_model(model_dir, home)
        bodies = [H.Body.image(data, Path(name).name) for name, data in items]
        common = {
            "MT_MODEL_TAG": tag,
            "MT_BACKEND": "onnx",
            "MT_BENCH_MAX_BATCH": str(args.max_batch),
            "MT_BENCH_MAX_LATENCY_MS": str(args.max_latency_ms),
        }
        specs = {
            "adaptive batching (2 services)": (
                "benchmarks.batched_service:BatchedDetect",
                {"MT_BENCH_BATCHING": "1"},
            ),
            "no batching (2 services)": (
                "benchmarks.batched_service:BatchedDetect",
                {"MT_BENCH_BATCHING": "0"},
            ),
            "service.py (production)": ("service:MagneticTileService", {}),
        }
        servers: dict[str, H.Server] = {}
        try:
            for name, (target, env) in specs.items():
                servers[name] = H.start_server(target, home, work / f"{len(servers)}.log", {**common, **env})
                H.generate_load(
                    servers[name].url + "/detect", bodies, 4, 24, 120
                )  # warm-up (and dispatcher training)
            print(f"\nservers ready: {', '.join(f'{n} @ {s.url}' for n, s in servers.items())}")
            raw: dict[str, dict[int, list[H.LoadResult]]] = {n: {} for n in servers}
            after_idle: dict[str, int] = {}
            after_idle_n: dict[str, int] = {}
            for r in range(args.reps):
                for c in (int(x) for x in args.concurrency.split(",")):
                    order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                    for name in order:
                        # the first requests after an idle spell are not steady state: BentoML's
                        # inter-service client may reuse a connection the model service closed
                        # (keep-alive timeout) and answer 500; counted apart, not in the cell
                        warm = H.generate_load(servers[name].url + "/detect", bodies, c, c, 120)
                        after_idle[name] = after_idle.get(name, 0) + warm.error_count
                        after_idle_n[name] = after_idle_n.get(name, 0) + warm.ok + warm.error_count
                        res = H.generate_load(
                            servers[name].url + "/detect", bodies, c, args.level_requests, args.level_seconds
                        )
                        raw[name].setdefault(c, []).append(res)
                        print(
                            f"  rep {r + 1} c={c:<2d} {name:32s} {res.req_per_s:6.2f} req/s, p50 "
                            f"{C.percentile(res.latencies_ms, 50):7.1f} ms, errors {res.error_count}",
                            flush=True,
                        )
        finally:
            for s in servers.values():
                H.stop_server(s)
        for name, by_c in raw.items():
            http[name] = {
                "after_idle": {"requests": after_idle_n.get(name, 0), "errors": after_idle.get(name, 0)}
            }
            for c, results in by_c.items():
                lat = [x for res in results for x in res.latencies_ms]
                sizes_seen = [x for res in results for x in res.batch_sizes]
                ok = sum(res.ok for res in results)
                wall = sum(res.wall_s for res in results)
                errors: dict[str, int] = {}
                for res in results:
                    for k, v in res.errors.items():
                        errors[k] = errors.get(k, 0) + v
                http[name][str(c)] = {
                    "ok": ok,
                    "errors": sum(errors.values()),
                    "error_kinds": errors,
                    "req_per_s": ok / wall,
                    **C.latency_summary(lat),
                    "mean_batch_size": statistics.fmean(sizes_seen) if sizes_seen else None,
                    "max_batch_size": max(sizes_seen) if sizes_seen else None,
                }
        print(
            f"\n### B. HTTP /detect, real tiles, {args.reps} interleaved reps x {args.level_seconds:.0f} s "
            f"per cell (max_batch_size {args.max_batch}, max_latency_ms {args.max_latency_ms})\n"
        )
        print(
            C.table(
                [
                    "server",
                    "concurrency",
                    "ok",
                    "errors",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "mean batch",
                    "max batch",
                ],
                [
                    [
                        name,
                        c,
                        s["ok"],
                        s["errors"],
                        s["req_per_s"],
                        s["p50_ms"],
                        s["p99_ms"],
                        "–" if s["mean_batch_size"] is None else f"{s['mean_batch_size']:.2f}",
                        "–" if s["max_batch_size"] is None else s["max_batch_size"],
                    ]
                    for name, by_c in http.items()
                    for c, s in by_c.items()
                    if c != "after_idle"
                ],
            )
        )
        print(
            "\nerrors in the first requests of each cell after the server idled (excluded above): "
            + "; ".join(
                f"{name} {v['after_idle']['errors']}/{v['after_idle']['requests']}"
                for name, v in http.items()
            )
        )
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(model_dir, model_source),
            "args": vars(args),
            "inprocess": {
                "fixed_270x324_network_ms_per_image": fixed,
                "real_e2e": real,
                "padding_effect": effect,
            },
            "http": http,
        },
    )
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
