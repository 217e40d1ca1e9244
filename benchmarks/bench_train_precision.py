"""Training step time of the default model on this CPU: fp32 vs bf16 autocast, channels_last on/off.

    python benchmarks/bench_train_precision.py [--steps 8] [--batch 16] [--crop 160] [--override k=v ...]

The project's LightningModule (``conf/model``, composed by Hydra like training does; ImageNet
weights not loaded: speed does not depend on weight values) takes full training steps on a fixed
batch (batch × 1 × crop², random image, sparse mask, tile labels): forward (``module.forward``,
which converts to channels_last when the config says so), the pixel loss + the tile head's
cross-entropy as ``training_step`` computes them, backward, AdamW step. bf16 autocasts forward and
loss as Lightning's ``bf16-mixed`` does. The four variants take their steps interleaved (one step
each per round, the first one rotating), so machine load hits them alike; ratios are of medians
from the same run.

Writes benchmarks/results/bench_train_precision.json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def build(overrides: list[str], channels_last: bool):
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(C.REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "model.pretrained=none",
                f"model.channels_last={str(channels_last).lower()}",
                *overrides,
            ],
        )
    torch.manual_seed(0)
    return instantiate(cfg.model), cfg


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--override", action="append", default=[], help="Hydra override, repeatable")
    parser.add_argument("--result-name", default="bench_train_precision")
    args = parser.parse_args(argv)

    info = C.machine_info()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, args.crop, args.crop, generator=g)
    y = (torch.rand(args.batch, 1, args.crop, args.crop, generator=g) > 0.95).float()
    labels = torch.randint(0, 6, (args.batch,), generator=g)

    variants = {}
    for precision, channels_last in itertools.product(("fp32", "bf16"), (False, True)):
        module, cfg = build(args.override, channels_last)
        module.train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        name = f"{precision}{' channels_last' if channels_last else ''}"
        variants[name] = {
            "module": module,
            "optimizer": optimizer,
            "bf16": precision == "bf16",
            "channels_last": channels_last,
            "times": [],
        }
    net = cfg.model

    def step(v: dict) -> float:
        module, optimizer = v["module"], v["optimizer"]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v["bf16"]):
            logits, tile_logits = module(x)
            loss = module.loss_fn(logits.float(), y)
            if tile_logits is not None and module.head_weight:
                loss = loss + module.head_weight * F.cross_entropy(tile_logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return (time.perf_counter() - start) * 1000.0

    print(f"# bench_train_precision — {C.describe_machine(info)}")
    print(
        f"model: {net.arch} {net.encoder} (decoder {list(net.decoder_channels)}, tile head "
        f"{bool(net.tile_classes)}); batch {args.batch} x 1 x {args.crop}²; "
        f"torch threads {torch.get_num_threads()}"
    )
    names = list(variants)
    for _ in range(args.warmup):
        for name in names:
            step(variants[name])
    load_before = C.load_average()
    for r in range(args.steps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            variants[name]["times"].append(step(variants[name]))
        print(
            f"  round {r + 1}/{args.steps}: "
            + ", ".join(f"{n} {variants[n]['times'][-1]:.0f} ms" for n in names),
            flush=True,
        )
    load_after = C.load_average()
    base = statistics.median(variants["fp32"]["times"])
    results = {}
    for name, v in variants.items():
        median = statistics.median(v["times"])
        results[name] = {
            "precision": "bf16-mixed" if v["bf16"] else "fp32",
            "channels_last": v["channels_last"],
            "step": C.latency_summary(v["times"]),
            "median_step_ms": median,
            "images_per_s": 1000.0 * args.batch / median,
            "speedup_over_fp32": base / median,
        }
    cl_bf16 = results["bf16"]["median_step_ms"] / results["bf16 channels_last"]["median_step_ms"]
    cl_fp32 = results["fp32"]["median_step_ms"] / results["fp32 channels_last"]["median_step_ms"]
    fastest = min(results, key=lambda n: results[n]["median_step_ms"])
    print()
    print(
        C.table(
            ["variant", "median step ms", "p90 ms", "images/s", "× fp32"],
            [
                [
                    n,
                    r["median_step_ms"],
                    r["step"]["p90_ms"],
                    r["images_per_s"],
                    f"{r['speedup_over_fp32']:.2f}x",
                ]
                for n, r in results.items()
            ],
        )
    )
    print(f"\nchannels_last speed-up: bf16 {cl_bf16:.2f}x, fp32 {cl_fp32:.2f}x; fastest: {fastest}")
    path = C.write_result(
        args.result_name,
        {
            "machine": {
                **info,
                "load_average_before_timed_steps": load_before,
                "load_average_after_timed_steps": load_after,
                "torch_threads": torch.get_num_threads(),
            },
            "model": {
                "source": "conf/model (composed), random init (pretrained=none)",
                "encoder": str(net.encoder),
                "arch": str(net.arch),
                "decoder_channels": list(net.decoder_channels),
                "tile_head": bool(net.tile_classes),
                "backend": "torch-cpu (training)",
                "precision": "fp32 and bf16-mixed",
                "test_time_flips": None,
            },
            "args": vars(args),
            "variants": results,
            "channels_last_speedup": {"bf16": cl_bf16, "fp32": cl_fp32},
            "bf16_speedup": {
                "channels_last": results["bf16 channels_last"]["speedup_over_fp32"]
                * results["fp32"]["median_step_ms"]
                / results["fp32 channels_last"]["median_step_ms"],
                "contiguous": results["bf16"]["speedup_over_fp32"],
            },
            "fastest": fastest,
        },
    )
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
