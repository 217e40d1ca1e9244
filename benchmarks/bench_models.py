"""Two trained models, one run: ``predict()`` latency of a candidate against a baseline model.

    python benchmarks/bench_models.py --baseline models/segmenter --candidate DIR [--n 40] [--threads 2]

Both models go through the same ``Predictor`` and backend (ONNX Runtime FP32 by default) on the same
real tiles at their original sizes; each model does its own preprocessing (a model saved with
``preprocess.scale`` 1.5 upsamples every tile, so it pays for ~2.25× the pixels). Calls alternate
model by model and image by image (who goes first alternates), so a change in machine load hits both
alike; the figure to read is the candidate/baseline ratio of the medians. Writes
benchmarks/results/<--result-name>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="model folder of the baseline")
    parser.add_argument("--candidate", required=True, help="model folder of the candidate")
    parser.add_argument("--backend", default="onnx", help="onnx | onnx-int8 | torch (default onnx)")
    parser.add_argument("--n", type=int, default=40, help="distinct real tiles (default 40)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the tiles (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--result-name", default="bench_models_cpu2h_vs_default")
    args = parser.parse_args()

    dirs = {"baseline": Path(args.baseline), "candidate": Path(args.candidate)}
    predictors = {
        k: Predictor.from_dir(d, backend=args.backend, threads=args.threads) for k, d in dirs.items()
    }
    images = C.decode_all(C.real_image_bytes(args.n))
    for predictor in predictors.values():
        for gray in images[: args.warmup]:
            predictor.predict(gray)
    load_before = C.load_average()
    times = C.interleaved_ms({k: p.predict for k, p in predictors.items()}, images, args.rounds)
    summaries = {k: C.latency_summary(v) for k, v in times.items()}
    result = {
        "what": "predict() latency on real tiles at their original sizes, candidate vs baseline, same run",
        "machine": C.machine_info(),
        "load_average": {"before": load_before, "after": C.load_average()},
        "backend": args.backend,
        "threads": args.threads,
        "tiles": len(images),
        "rounds": args.rounds,
        "models": {k: C.describe_model(d, str(d)) for k, d in dirs.items()},
        "latency": summaries,
        "candidate_over_baseline": {
            "p50_ratio": summaries["candidate"]["p50_ms"] / summaries["baseline"]["p50_ms"],
            "median_paired_ratio": C.paired_median(times["candidate"], times["baseline"]),
        },
    }
    path = C.write_result(args.result_name, result)
    print(C.describe_machine(result["machine"]))
    print(
        C.table(
            ["model", "p50 ms", "p99 ms"],
            [[k, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}"] for k, s in summaries.items()],
        )
    )
    print(
        f"candidate / baseline: p50 {result['candidate_over_baseline']['p50_ratio']:.2f}x, "
        f"paired median {result['candidate_over_baseline']['median_paired_ratio']:.2f}x → {path}"
    )


if __name__ == "__main__":
    main()
