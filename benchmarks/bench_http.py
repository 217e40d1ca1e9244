"""End-to-end HTTP benchmark of ``bentoml serve service:MagneticTileService`` on loopback.

    python benchmarks/bench_http.py [--model-dir DIR] [--soak-requests 5000] [--level-seconds 30]

Starts the service itself (BENTOML_HOME in a temp dir holding the model, saved with
mtdefect.store.save_model_dir), then, with a bounded closed-loop load generator (threads, one
keep-alive connection each, count- and time-limited, 127.0.0.1 only):

1. 100 warm-up requests, then the server's RSS (summed over its process tree);
2. single-request latency of a 270x324 tile at concurrency 1 (/detect, /segment, /overlay);
3. /detect on real tiles at concurrency 1, 4 and 8: req/s, p50/p99, errors; before and after
   each level the in-process ONNX Runtime throughput (Predictor.predict on the same images, same
   thread settings as the server) is measured in this process while the server idles, and the
   ratio HTTP / in-process is reported against the mean of the two adjacent measurements;
4. a soak at concurrency 4 until the server has answered --soak-requests requests in total,
   sampling RSS every 500 requests: RSS growth from 100 to N requests.

The client shares the CPUs with the server (it is the same machine); its CPU time is reported.
The server runs ``--backend`` (default onnx-int8; onnx for FP32); the in-process reference runs
the same backend. Writes benchmarks/results/bench_http_<int8|fp32>.json, with the issue #14
targets evaluated under ``targets``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _http as H  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402


def inprocess_ort(predictor: Predictor, images, seconds: float, max_calls: int) -> dict:
    """Sequential predict() (and decode + predict) throughput, like one server worker without HTTP."""
    from mtdefect.inference import decode_image

    calls, t_predict, t_decode = 0, 0.0, 0.0
    deadline = time.monotonic() + seconds
    while calls < max_calls and time.monotonic() < deadline:
        data = images[calls % len(images)]
        t0 = time.perf_counter()
        gray = decode_image(data)
        t1 = time.perf_counter()
        predictor.predict(gray)
        t2 = time.perf_counter()
        calls += 1
        t_decode += t1 - t0
        t_predict += t2 - t1
    return {
        "calls": calls,
        "predict_per_s": calls / t_predict,
        "decode_predict_per_s": calls / (t_predict + t_decode),
    }


def targets(levels: dict, single: dict) -> dict:
    """Issue #14's HTTP targets, each against this run's numbers."""
    out = {}
    d = single.get("/detect")
    if d:
        out["single_detect_p50_le_30ms"] = {"value": d["p50_ms"], "met": d["p50_ms"] <= 30.0}
        out["single_detect_p99_le_60ms"] = {"value": d["p99_ms"], "met": d["p99_ms"] <= 60.0}
    if "4" in levels:
        r = levels["4"]["ratio_to_inprocess"]
        out["c4_ratio_to_inprocess_ge_0.95"] = {"value": r, "met": r >= 0.95}
    if "8" in levels:
        s = levels["8"]
        met = s["req_per_s"] >= 50.0 and s["errors"] == 0 and s["p99_ms"] <= 200.0
        out["c8_ge_50_per_s_zero_errors_p99_le_200ms"] = {
            "value": {"req_per_s": s["req_per_s"], "errors": s["errors"], "p99_ms": s["p99_ms"]},
            "met": met,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="model folder (default: the trained one, else random weights)")
    parser.add_argument("--service", default="service:MagneticTileService")
    parser.add_argument("--n-images", type=int, default=40, help="distinct real tiles to cycle through")
    parser.add_argument(
        "--backend",
        default="onnx-int8",
        help="MT_BACKEND of the server and the in-process "
        "reference: onnx (FP32) or onnx-int8 (made here when the model folder has none)",
    )
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--level-requests", type=int, default=400, help="max requests per concurrency level")
    parser.add_argument("--level-seconds", type=float, default=25.0, help="max seconds per concurrency level")
    parser.add_argument(
        "--single-n", type=int, default=40, help="requests for the 270x324 single-request latency"
    )
    parser.add_argument("--ref-seconds", type=float, default=4.0, help="seconds per in-process reference run")
    parser.add_argument(
        "--soak-requests", type=int, default=5000, help="total requests at the last RSS sample"
    )
    parser.add_argument("--soak-concurrency", type=int, default=4)
    parser.add_argument("--soak-max-seconds", type=float, default=900.0)
    parser.add_argument("--rss-every", type=int, default=500)
    parser.add_argument("--result-name", default=None, help="results/<name>.json (bench_http_<precision>)")
    parser.add_argument(
        "--env", action="append", default=[], help="extra server env KEY=VALUE (e.g. MT_THREADS=1)"
    )
    args = parser.parse_args(argv)

    info = C.machine_info()
    work = C.workdir("http")
    model_dir, model_source = C.resolve_model_dir(args.model_dir, work)
    if args.backend == "onnx-int8" and C.ensure_int8(model_dir):
        model_source += " (INT8 quantized here)"
    precision = C.PRECISION[args.backend]
    args.result_name = args.result_name or f"bench_http_{precision}"
    home = work / "bentoml"
    tag = H.store_model(model_dir, home)
    server_env = {"MT_MODEL_TAG": tag, "MT_BACKEND": args.backend}
    server_env.update(dict(kv.split("=", 1) for kv in args.env))
    threads = int(server_env["MT_THREADS"]) if server_env.get("MT_THREADS") else None

    items = C.real_image_bytes(args.n_images)
    real_bodies = [H.Body.image(data, Path(name).name) for name, data in items]
    real_bytes = [data for _, data in items]
    fixed_jpeg = C.jpeg_bytes(C.fixed_tile())
    fixed_body = H.Body.image(fixed_jpeg, "tile_270x324.jpg")
    predictor = Predictor.from_dir(model_dir, backend=args.backend, threads=threads)
    for data in real_bytes[:3]:  # warm the in-process reference too
        inprocess_ort(predictor, [data], 10, 1)

    print(f"# bench_http — {C.describe_machine(info)}")
    print(f"model: {model_source} (stored as {tag}); service {args.service}; server env {server_env}")

    log_path = work / "server.log"
    t_start = time.perf_counter()
    server = H.start_server(args.service, home, log_path, server_env)
    print(
        f"server ready at {server.url} in {time.perf_counter() - t_start:.1f} s "
        f"(log: {log_path}; kept with MT_BENCH_KEEP=1)"
    )
    total = 0
    rss_samples: list[dict] = []
    refs: list[dict] = []
    levels: dict[str, dict] = {}
    single: dict[str, dict] = {}
    try:
        rss_samples.append({"requests": 0, **server.tree_rss()})
        warm = H.generate_load(server.url + "/detect", real_bodies, 4, 100, 300)
        total += warm.ok + warm.error_count
        rss_samples.append({"requests": total, **server.tree_rss()})
        rss_100 = rss_samples[-1]

        refs.append(inprocess_ort(predictor, real_bytes, args.ref_seconds, 200))
        for route in ("/detect", "/segment", "/overlay"):
            n = args.single_n if route == "/detect" else max(10, args.single_n // 2)
            r = H.generate_load(server.url + route, [fixed_body], 1, n, 120)
            total += r.ok + r.error_count
            single[route] = r.summary()

        for c in (int(x) for x in args.concurrency.split(",")):
            r = H.generate_load(
                server.url + "/detect", real_bodies, c, args.level_requests, args.level_seconds
            )
            total += r.ok + r.error_count
            refs.append(inprocess_ort(predictor, real_bytes, args.ref_seconds, 200))
            ref = statistics.fmean(x["predict_per_s"] for x in refs[-2:])
            ref_dec = statistics.fmean(x["decode_predict_per_s"] for x in refs[-2:])
            levels[str(c)] = {
                **r.summary(),
                "inprocess_ort_predict_per_s": ref,
                "inprocess_ort_decode_predict_per_s": ref_dec,
                "ratio_to_inprocess": r.req_per_s / ref,
                "ratio_to_inprocess_with_decode": r.req_per_s / ref_dec,
            }
            print(
                f"  c={c}: {r.req_per_s:.2f} req/s, p50 {C.percentile(r.latencies_ms, 50):.1f} ms, "
                f"errors {r.error_count}; in-process ORT {ref:.2f} img/s",
                flush=True,
            )

        soak = {"ok": 0, "errors": 0, "error_kinds": {}}
        soak_deadline = time.monotonic() + args.soak_max_seconds
        soak_t0 = time.perf_counter()
        while total < args.soak_requests and time.monotonic() < soak_deadline:
            chunk = min(args.rss_every - total % args.rss_every, args.soak_requests - total)
            r = H.generate_load(
                server.url + "/detect",
                real_bodies,
                args.soak_concurrency,
                chunk,
                soak_deadline - time.monotonic(),
            )
            total += r.ok + r.error_count
            soak["ok"] += r.ok
            soak["errors"] += r.error_count
            for k, v in r.errors.items():
                soak["error_kinds"][k] = soak["error_kinds"].get(k, 0) + v
            if total % args.rss_every == 0 or total >= args.soak_requests:
                rss_samples.append({"requests": total, **server.tree_rss()})
                print(
                    f"  soak: {total} requests, server RSS {rss_samples[-1]['total_mib']:.1f} MiB", flush=True
                )
        if rss_samples[-1]["requests"] != total:  # soak skipped or cut short by --soak-max-seconds
            rss_samples.append({"requests": total, **server.tree_rss()})
        soak["wall_s"] = time.perf_counter() - soak_t0
        soak["req_per_s"] = soak["ok"] / soak["wall_s"] if soak["wall_s"] else float("nan")
        rss_end = rss_samples[-1]
    finally:
        H.stop_server(server)

    growth = (rss_end["total_mib"] - rss_100["total_mib"]) / rss_100["total_mib"]
    print("\n### /detect on real tiles (closed loop, keep-alive, loopback)\n")
    print(
        C.table(
            [
                "concurrency",
                "ok",
                "errors",
                "req/s",
                "p50 ms",
                "p99 ms",
                "server model p50 ms",
                "in-process ORT img/s",
                "HTTP / in-process",
            ],
            [
                [
                    c,
                    s["ok"],
                    s["errors"],
                    s["req_per_s"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["server_inference_p50_ms"],
                    s["inprocess_ort_predict_per_s"],
                    f"{s['ratio_to_inprocess']:.2f}x",
                ]
                for c, s in levels.items()
            ],
        )
    )
    print(
        f"\n### single request, fixed {C.FIXED_WH[0]}x{C.FIXED_WH[1]} tile (JPEG {len(fixed_jpeg)} B), "
        "concurrency 1\n"
    )
    print(
        C.table(
            ["route", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "server model p50 ms"],
            [
                [
                    route,
                    s["ok"],
                    s["errors"],
                    s["p50_ms"],
                    s["p90_ms"],
                    s["p99_ms"],
                    s["server_inference_p50_ms"],
                ]
                for route, s in single.items()
            ],
        )
    )
    print("\n### server RSS (sum over the process tree)\n")
    print(
        C.table(
            ["after requests", "RSS MiB", "processes"],
            [[s["requests"], s["total_mib"], len(s["processes"])] for s in rss_samples],
        )
    )
    print(
        f"\nRSS growth {rss_100['requests']} → {rss_end['requests']} requests: {100 * growth:+.2f}% "
        f"(target <= 10%); soak {soak['ok']} ok / {soak['errors']} errors at {soak['req_per_s']:.2f} req/s"
    )
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(
                model_dir, model_source, tag=tag, backend=args.backend, precision=precision
            ),
            "targets": targets(levels, single),
            "args": vars(args),
            "server_env": server_env,
            "levels": levels,
            "single_270x324": single,
            "inprocess_refs": refs,
            "rss": {"samples": rss_samples, "growth_100_to_end": growth},
            "soak": soak,
            "total_requests": total,
        },
    )
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
