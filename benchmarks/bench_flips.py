"""What test-time flips cost: the same model and images through ``Predictor.predict`` with each flip set.

    python benchmarks/bench_flips.py [--model-dir DIR] [--n 30] [--backend onnx]
        [--flips ,vertical,horizontal+vertical+both]

Flip sets are given as a comma list, each a ``+``-joined set of names (empty: no flips). Calls are
interleaved image by image, the first set rotating, so machine load hits every set alike; the first
set is the baseline of the printed ratios. Writes benchmarks/results/bench_flips.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="model folder (settings.json, weights.safetensors[, model.onnx])")
    parser.add_argument("--n", type=int, default=30, help="distinct real images (default 30)")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--flips", default=",vertical,horizontal+vertical+both")
    parser.add_argument("--result-name", default="bench_flips")
    args = parser.parse_args(argv)

    info = C.machine_info()
    model_dir, source = C.resolve_model_dir(args.model_dir, C.workdir("flips"))
    base = Predictor.from_dir(model_dir, backend=args.backend)
    sets = [tuple(f for f in spec.split("+") if f) for spec in args.flips.split(",")]
    predictors = [base.with_flips(flips) for flips in sets]
    images = C.decode_all(C.real_image_bytes(args.n))
    for p in predictors:  # warm-up
        p.predict(images[0])
    by_index = C.interleaved_ms({str(k): p.predict for k, p in enumerate(predictors)}, images)
    ms = [by_index[str(k)] for k in range(len(sets))]

    print(f"# bench_flips — {C.describe_machine(info)}")
    print(
        f"model: {source}; backend {base.backend}; {len(images)} real images, native size; saved flips: "
        f"{list(base.settings.test_time_flips) or 'none'}"
    )
    rows, summary = [], []
    baseline = statistics.median(ms[0])
    for flips, times in zip(sets, ms):
        median = statistics.median(times)
        paired = C.paired_median(times, ms[0])
        rows.append(
            [
                "+".join(flips) or "none",
                1 + len(flips),
                f"{median:.1f}",
                f"{C.percentile(times, 95):.1f}",
                f"{median / baseline:.2f}x",
                f"{paired:.2f}x",
            ]
        )
        summary.append(
            {
                "flips": list(flips),
                "views": 1 + len(flips),
                "latency_ms": C.latency_summary(times),
                "median_ratio": median / baseline,
                "paired_median_ratio": paired,
            }
        )
    print(C.table(["flips", "views", "p50 ms", "p95 ms", "p50 vs none", "paired median"], rows))
    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(model_dir, source),
            "backend": base.backend,
            "args": vars(args),
            "results": summary,
        },
    )
    print(f"\nwritten: {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
