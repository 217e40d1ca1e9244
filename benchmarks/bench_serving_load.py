"""Serving under load (issue #22): memory under concurrent maximum-size uploads, throughput against
the same cores in process, and the single-tile latency against a reference network; one run.

    python benchmarks/bench_serving_load.py [--home .bentoml] [--configs 1x2,2x1] [--burst 16]

Serves what ``make serve`` serves: the newest model of the project's BentoML store (``--home``,
default ``.bentoml``) with ``MT_BACKEND=auto`` (the precision the package stage recorded), in
``bentoml serve`` processes started here on loopback. Without a store model it stores the trained
model folder (or, without one, the default network with random weights) in a temp home. For each
server configuration ``WxT`` (MT_WORKERS x MT_THREADS):

1. **latency**: /detect on one real tile resized to 270 x 324, concurrency 1, p50; against the
   reference network run **in process** in the same run (a U-Net on ResNet-18, smp's default decoder,
   ONNX Runtime FP32, random weights: speed does not depend on their values, through the same
   ``Predictor.predict``; the faster of ORT on every core and on one thread), measured before and
   after the HTTP requests;
2. **throughput**: /detect on the real tile-size mix (40 tiles of the shared archive) at
   concurrency 1, 4, 8 and 16, tiles/s, against the in-process throughput of the served backend on
   the same images and the same cores (decode + ``predict``, no HTTP: the better of one predictor
   with ORT on every core and one single-threaded predictor per core in parallel), measured right
   before and after each level while the server idles;
3. **memory** (first configuration; every one with ``--memory-all``): ``--burst`` concurrent
   uploads of a real tile scaled to 4096 x 4096 (the default ``MT_MAX_PIXELS``), the resident
   memory of the server's process tree sampled every 50 ms (psutil), every status and time; then
   the idle RSS 5 s and 20 s later.

The client runs on the same cores (its CPU time is reported). Writes
benchmarks/results/serving_load.json (``--result-name``), naming the model and backend measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _http as H  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from mtdefect.inference import Predictor, decode_image  # noqa: E402

MODEL_NAME = "magnetic-tile-segmenter"
CLEAN = {200, 413, 429, 503}


# ---------------------------------------------------------------- model and reference


def served_model(home_arg: str | None, work: Path) -> tuple[Path, str, str]:
    """(BentoML home, model folder inside it, description) of the model the server will serve."""
    home = Path(home_arg) if home_arg else C.REPO / ".bentoml"
    store = home / "models" / MODEL_NAME
    if (store / "latest").exists():
        version = (store / "latest").read_text().strip()
        return home, store / version, f"{home.name} store {MODEL_NAME}:{version}"
    model_dir, source = C.resolve_model_dir(None, work)
    home = work / "bentoml"
    tag = H.store_model(model_dir, home)
    version = tag.split(":", 1)[1]
    return home, home / "models" / MODEL_NAME / version, f"{source}, stored here as {tag}"


def reference_dir(out: Path) -> Path:
    """The reference: U-Net on ResNet-18 (smp's default decoder 256-128-64-32-16), one input
    channel, no tile head, random weights, ONNX FP32."""
    import torch

    from mtdefect.export import export_onnx
    from mtdefect.inference.network import build_net
    from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings
    from mtdefect.model.bundle import write_model_dir

    torch.manual_seed(0)
    config = {"arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 1}
    settings = ModelSettings(
        net=config,
        preprocess=PreprocessSettings(per_image=True),
        postprocess=PostprocessSettings(),
        info={"purpose": "benchmark reference (random weights)"},
    )
    write_model_dir(build_net(**config).eval(), settings, out)
    export_onnx(out)
    return out


def predict_p50(predictors: list[Predictor], gray: np.ndarray, n: int) -> float:
    """The fastest of ``predictors`` (the same network under different thread settings): median ms."""
    best = float("inf")
    for predictor in predictors:
        predictor.predict(gray)
        best = min(best, statistics.median(predictor.predict(gray)[1] for _ in range(n)))
    return best


def inprocess_rate(local: dict[str, list[Predictor]], blobs: list[bytes], seconds: float) -> dict[str, float]:
    """Tiles per second of decode + predict in this process, no HTTP, on all cores, two ways: one
    predictor with ORT on every core (``one_session``), and one single-threaded predictor per core
    working in parallel (``per_core``; ORT releases the GIL). The better one is what the cores do."""

    def loop(predictor: Predictor, offset: int, stop_at: float, counts: list[int]) -> None:
        calls = 0
        while time.perf_counter() < stop_at:
            predictor.predict(decode_image(blobs[(offset + calls) % len(blobs)]))
            calls += 1
        counts.append(calls)

    out = {}
    for name, predictors in local.items():
        counts: list[int] = []
        start = time.perf_counter()
        threads = [
            threading.Thread(target=loop, args=(p, 7 * i, start + seconds, counts))
            for i, p in enumerate(predictors)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[name] = sum(counts) / (time.perf_counter() - start)
    out["best"] = max(out.values())
    return out


# ---------------------------------------------------------------- memory burst


class RssSampler:
    def __init__(self, server: H.Server, every_s: float = 0.05) -> None:
        self.server, self.every_s = server, every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self.server.tree_rss()["total_mib"]))
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max(v for _, v in self.samples)


def large_upload(gray: np.ndarray, side: int) -> bytes:
    big = Image.fromarray(gray).resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def burst(server: H.Server, payload: bytes, n: int, timeout_s: float) -> dict:
    def send(_: int) -> tuple[int, float, str]:
        start = time.monotonic()
        try:
            r = requests.post(
                server.url + "/detect",
                files={"image": ("large.jpg", payload, "image/jpeg")},
                timeout=timeout_s,
            )
            return r.status_code, time.monotonic() - start, r.headers.get("Retry-After", "")
        except requests.RequestException as exc:
            return -1, time.monotonic() - start, type(exc).__name__

    idle_before = server.tree_rss()["total_mib"]
    with RssSampler(server) as sampler, concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(send, range(n)))
    time.sleep(5)
    after_5 = server.tree_rss()["total_mib"]
    time.sleep(15)
    after_20 = server.tree_rss()["total_mib"]
    statuses = [a[0] for a in answers]
    return {
        "uploads": n,
        "side": Image.open(io.BytesIO(payload)).size[0],
        "payload_bytes": len(payload),
        "statuses": statuses,
        "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "seconds": [round(a[1], 2) for a in answers],
        "retry_after": [a[2] for a in answers if a[0] == 503],
        "all_clean": set(statuses) <= CLEAN,
        "rss_idle_before_mib": idle_before,
        "rss_peak_mib": sampler.peak_mib,
        "rss_idle_after_5s_mib": after_5,
        "rss_idle_after_20s_mib": after_20,
        "rss_trace": [
            (round(t, 2), round(v, 1)) for t, v in sampler.samples[:: max(1, len(sampler.samples) // 200)]
        ],
    }


# ---------------------------------------------------------------- one server configuration


def served_backend(log_path: Path) -> str | None:
    match = re.search(r"ready: model \S+ on (\S+)", log_path.read_text(errors="replace"))
    return match.group(1) if match else None


def run_config(
    args, label: str, env: dict, home: Path, model_dir: Path, work: Path, fixed, real, ref
) -> dict:
    workers, threads = (int(v) for v in label.split("x"))
    log_path = work / f"server-{label}.log"
    server_env = {"MT_BACKEND": args.backend, "MT_WORKERS": str(workers), "MT_THREADS": str(threads), **env}
    server = H.start_server("service:MagneticTileService", home, log_path, server_env)
    out: dict = {"workers": workers, "threads": threads, "server_env": server_env}
    try:
        backend = served_backend(log_path)
        out["backend"] = backend
        # the same backend in process, ORT on every core (what the cores can do without HTTP)
        cores = len(os.sched_getaffinity(0))
        local = {
            "one_session": [Predictor.from_dir(model_dir, backend=backend or "onnx")],
            "per_core": [
                Predictor.from_dir(model_dir, backend=backend or "onnx", threads=1) for _ in range(cores)
            ],
        }
        fixed_body = H.Body.image(C.jpeg_bytes(fixed), "tile_270x324.jpg")
        real_bodies = [H.Body.image(b, f"tile{i}.jpg") for i, b in enumerate(real)]
        H.generate_load(server.url + "/detect", real_bodies, 4, 60, 120)  # warm-up
        out["rss_idle_mib"] = server.tree_rss()["total_mib"]

        ref_before = predict_p50(ref, fixed, args.single_n)  # the faster of all-cores and 1 thread
        single = H.generate_load(server.url + "/detect", [fixed_body], 1, args.single_n, 120).summary()
        ref_after = predict_p50(ref, fixed, args.single_n)
        ref_ms = (ref_before + ref_after) / 2
        out["latency_270x324"] = {
            "detect": single,
            "reference_predict_p50_ms": [ref_before, ref_after],
            "ratio_to_reference": single["p50_ms"] / ref_ms,
            "served_predict_p50_ms_inprocess": predict_p50(local["one_session"], fixed, args.single_n),
        }
        print(
            f"[{label}] /detect 270x324 p50 {single['p50_ms']:.1f} ms; reference in process "
            f"{ref_ms:.1f} ms -> {single['p50_ms'] / ref_ms:.2f}x",
            flush=True,
        )
        levels = {}
        rates = [inprocess_rate(local, real, args.ref_seconds)]
        for c in args.concurrency:
            r = H.generate_load(
                server.url + "/detect", real_bodies, c, args.level_requests, args.level_seconds
            )
            rates.append(inprocess_rate(local, real, args.ref_seconds))
            inproc = statistics.fmean(r["best"] for r in rates[-2:])
            levels[str(c)] = {**r.summary(), "inprocess_tiles_per_s": inproc, "ratio": r.req_per_s / inproc}
            print(
                f"[{label}] c={c}: {r.req_per_s:.1f} tiles/s ({r.error_count} errors), in process "
                f"{inproc:.1f} -> {r.req_per_s / inproc:.2f}x",
                flush=True,
            )
        out["throughput"] = levels
        out["inprocess_rates"] = rates
        if args.burst and not args.skip_memory and (args.memory_all or label == args.configs[0]):
            payload = large_upload(fixed, args.side)
            out["memory"] = burst(server, payload, args.burst, args.client_timeout)
            m = out["memory"]
            ready = requests.get(server.url + "/readyz", timeout=10).status_code
            again = H.generate_load(server.url + "/detect", [fixed_body], 1, 3, 30)
            m["alive_after"] = {"readyz": ready, "detect_ok": again.ok, "detect_errors": again.error_count}
            print(
                f"[{label}] burst of {args.burst} {args.side}^2: {m['status_counts']}, peak RSS "
                f"{m['rss_peak_mib']:.0f} MiB, idle after {m['rss_idle_after_5s_mib']:.0f} / "
                f"{m['rss_idle_after_20s_mib']:.0f} MiB, readyz {ready}",
                flush=True,
            )
    finally:
        H.stop_server(server)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="BentoML home whose newest model is served (default: .bentoml)")
    parser.add_argument("--backend", default="auto", help="MT_BACKEND of the server (default auto)")
    parser.add_argument("--configs", default="1x2,2x1", help="server configurations WORKERSxTHREADS")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--n-images", type=int, default=40)
    parser.add_argument("--single-n", type=int, default=40)
    parser.add_argument("--level-requests", type=int, default=400)
    parser.add_argument("--level-seconds", type=float, default=20.0)
    parser.add_argument("--ref-seconds", type=float, default=4.0)
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--client-timeout", type=float, default=120.0)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-all", action="store_true", help="the burst on every configuration")
    parser.add_argument("--env", action="append", default=[], help="extra server env KEY=VALUE")
    parser.add_argument("--result-name", default="serving_load")
    args = parser.parse_args(argv)
    args.configs = args.configs.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    info = C.machine_info()
    work = C.workdir("load")
    home, model_dir, source = served_model(args.home, work)
    ref_dir = reference_dir(work / "reference")
    ref = [
        Predictor.from_dir(ref_dir, backend="onnx"),
        Predictor.from_dir(ref_dir, backend="onnx", threads=1),
    ]
    fixed = C.fixed_tile()
    real = [data for _, data in C.real_image_bytes(args.n_images)]
    env = dict(kv.split("=", 1) for kv in args.env)
    print(f"# bench_serving_load — {C.describe_machine(info)}\nmodel: {source}")
    configs = {}
    for label in args.configs:
        configs[label] = run_config(args, label, env, home, model_dir, work, fixed, real, ref)
    first = configs[args.configs[0]]
    backend = first.get("backend")
    with_c8 = [c for c in configs.values() if "8" in c["throughput"]]
    best_c8 = max(with_c8, key=lambda c: c["throughput"]["8"]["ratio"]) if with_c8 else None
    targets = {
        "served_backend_int8": {"value": backend, "met": backend == "onnx-int8"},
        "detect_p50_le_0.45x_reference": {
            "value": first["latency_270x324"]["ratio_to_reference"],
            "config": args.configs[0],
            "met": first["latency_270x324"]["ratio_to_reference"] <= 0.45,
        },
    }
    if best_c8:
        targets["c8_ge_0.85x_inprocess"] = {
            "value": best_c8["throughput"]["8"]["ratio"],
            "config": f"{best_c8['workers']}x{best_c8['threads']}",
            "met": best_c8["throughput"]["8"]["ratio"] >= 0.85,
        }
    for label, config in configs.items():
        memory = config.get("memory")
        if not memory:
            continue
        targets[f"burst_{label}_peak_rss_le_4GB_idle_le_1.5GB_clean"] = {
            "value": {
                "peak_mib": memory["rss_peak_mib"],
                "idle_after_20s_mib": memory["rss_idle_after_20s_mib"],
                "statuses": memory["status_counts"],
            },
            "met": memory["rss_peak_mib"] <= 4096
            and memory["rss_idle_after_20s_mib"] <= 1536
            and memory["all_clean"]
            and memory["alive_after"]["readyz"] == 200,
        }
    for name, t in targets.items():
        print(f"target {name}: {t['value']} -> {'met' if t['met'] else 'MISSED'}")
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(
                model_dir, source, backend=backend, precision=C.PRECISION.get(backend or "")
            ),
            "reference": {
                "net": "Unet resnet18 (smp default decoder), 1 channel, no tile head, random weights",
                "backend": "onnx",
                "precision": "fp32",
            },
            "args": {k: v for k, v in vars(args).items()},
            "targets": targets,
            "configs": configs,
            "load_average_at_end": C.load_average(),
        },
    )
    print(f"wrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
