"""Where the in-process time goes, and what cheap changes would buy (numbers for issue 5, item 6).

    python benchmarks/profile_inference.py [--model-dir DIR] [--n 24] [--reps 3]

1. ONNX Runtime session options on the same real tiles (network only), in rotating blocks (one
   session at a time, as in a service): the library's session (all cores, spinning on,
   ORT_ENABLE_ALL) vs variations.
2. postprocess() and its parts (find_regions, image_score) on the same tiles' probabilities. (The
   bincount / maximum.at region statistics this once compared against scipy's ndimage are now the
   library's find_regions.)
3. eager PyTorch with 1 vs all threads (OpenMP barriers are costly when the cores are shared).
Writes benchmarks/results/profile_inference.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mtdefect.inference import Predictor  # noqa: E402
from mtdefect.inference.postprocess import find_regions, image_score, postprocess, restore_probability  # noqa: E402
from mtdefect.inference.preprocess import preprocess  # noqa: E402
from mtdefect.inference.settings import ONNX_FILE  # noqa: E402


def ort_session(
    path: Path,
    threads: int,
    spinning: bool = True,
    level: str = "ALL",
    mem_pattern: bool = True,
    denormal_zero: bool = False,
    sequential: bool = True,
):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.enable_mem_pattern = mem_pattern
    options.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL if sequential else ort.ExecutionMode.ORT_PARALLEL
    )
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if denormal_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def interleave(fns: dict, inputs: list, reps: int) -> dict[str, dict]:
    """Every input through every config, the order rotated per input, so load changes hit all alike.

    Returns per config: mean ms per input, and the median over (input, rep) pairs of the paired
    speed-up against the first config (robust to load drifting during the run).
    """
    times = C.interleaved_ms(fns, inputs, reps)
    base = times[next(iter(fns))]
    return {
        n: {"ms": statistics.fmean(v), "paired_speedup": C.paired_median(base, v)} for n, v in times.items()
    }


def interleave_blocks(fns: dict, inputs: list, reps: int) -> dict[str, dict]:
    """Each config runs all inputs back to back (a block); blocks rotate, reps times.

    For ONNX Runtime sessions: per-input interleaving would let one session's spin-waiting worker
    threads (which keep spinning for a while after a call) steal the cores from the next session's
    call, which a service with one session never sees. Paired speed-up: per rep, block vs block.
    """
    names = list(fns)
    means: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fns[name](inputs[0])  # one unmeasured call: the previous session's spinners wind down
            t0 = time.perf_counter()
            for x in inputs:
                fns[name](x)
            means[name].append((time.perf_counter() - t0) * 1000 / len(inputs))
    base = means[names[0]]
    return {
        n: {"ms": statistics.median(v), "paired_speedup": statistics.median(b / t for b, t in zip(base, v))}
        for n, v in means.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--result-name", default="profile_inference", help="results/<name>.json")
    args = parser.parse_args(argv)

    info = C.machine_info()
    work = C.workdir("profile")
    model_dir, model_source = C.resolve_model_dir(args.model_dir, work)
    predictor = Predictor.from_dir(model_dir, backend="onnx")
    images = C.decode_all(C.real_image_bytes(args.n))
    batches = [preprocess(g, predictor.settings.preprocess)[0] for g in images]
    cores = os.cpu_count() or 1
    print(f"# profile_inference — {C.describe_machine(info)}")
    print(f"model: {model_source}; {len(images)} real tiles")

    onnx = model_dir / ONNX_FILE
    variants = {
        f"library ({cores} thr, spin, ALL)": predictor.runner,
        "1 thread": ort_session(onnx, 1),
        f"{cores} thr, no spinning": ort_session(onnx, cores, spinning=False),
        f"{cores} thr, EXTENDED opt": ort_session(onnx, cores, level="EXTENDED"),
        f"{cores} thr, no mem pattern": ort_session(onnx, cores, mem_pattern=False),
        f"{cores} thr, denormal→0": ort_session(onnx, cores, denormal_zero=True),
    }
    for fn in variants.values():  # warm each shape once per session
        for b in batches:
            fn(b)
    ort_ms = interleave_blocks(variants, batches, max(args.reps, 4))
    print(
        f"\n### 1. ONNX Runtime session options (network only, real tiles, {max(args.reps, 4)} rotating "
        f"blocks of {len(batches)} tiles per session)\n"
    )
    print(
        C.table(
            ["session", "ms/img (median block)", "speed-up vs library (paired median)"],
            [[n, v["ms"], f"{v['paired_speedup']:.2f}x"] for n, v in ort_ms.items()],
        )
    )

    settings = predictor.settings.postprocess
    probs = [
        restore_probability(predictor.runner(b)[0][0, 0], preprocess(g, predictor.settings.preprocess)[1])
        for g, b in zip(images, batches)
    ]
    region_counts = [len(postprocess(p, settings).regions) for p in probs]
    window = max(settings.score_window, 1)
    post_ms = interleave(
        {
            "postprocess (all of it)": lambda p: postprocess(p, settings),
            "find_regions": lambda p: find_regions(p, settings.threshold, settings.min_region_area),
            f"image_score (window {window})": lambda p: image_score(p, window),
        },
        probs,
        args.reps,
    )
    print(
        f"\n### 2. postprocess and its parts (regions per tile: "
        f"median {statistics.median(region_counts):.0f}, max {max(region_counts)})\n"
    )
    print(
        C.table(
            ["step", "ms/img", "ratio to postprocess (paired median)"],
            [[n, v["ms"], f"{v['paired_speedup']:.2f}x"] for n, v in post_ms.items()],
        )
    )

    torch_ms = {}
    if not args.skip_torch:
        import torch

        from mtdefect.inference.predictor import load_torch_net

        net = load_torch_net(model_dir, predictor.settings)

        def torch_fn(threads: int):
            def run(batch: np.ndarray) -> np.ndarray:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    return net(torch.from_numpy(batch)).numpy()

            return run

        fns = {f"torch {t} thr": torch_fn(t) for t in sorted({1, cores})}
        for fn in fns.values():
            fn(batches[0])
        torch_ms = interleave(fns, batches[: max(4, len(batches) // 3)], args.reps)
        torch.set_num_threads(cores)
        print("\n### 3. eager PyTorch threads (network only)\n")
        print(
            C.table(
                ["torch", "ms/img", "speed-up vs 1 thread (paired median)"],
                [[n, v["ms"], f"{v['paired_speedup']:.2f}x"] for n, v in torch_ms.items()],
            )
        )

    path = C.write_result(
        args.result_name,
        {
            "machine": info,
            "model": C.describe_model(model_dir, model_source, backends=["onnx", "torch"]),
            "args": vars(args),
            "ort_network_ms": ort_ms,
            "postprocess_ms": post_ms,
            "regions_per_tile": region_counts,
            "torch_network_ms": torch_ms,
        },
    )
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
