"""Training throughput of one epoch: Lightning Trainer vs a plain PyTorch loop, same model and data.

    python benchmarks/bench_train.py                 # CPU: the default config (conf/), U-Net resnet10t
    python benchmarks/bench_train.py --gpu           # CUDA: resnet18 U-Net, 256² crops, bf16, channels_last
    python benchmarks/bench_train.py --mode alternate --rounds 3 --override data.module.batch_size=8

The model, the data module and the trainer settings come from the Hydra config in conf/ (composed
with the given overrides), so both sides train the project's SegmentationModule on TileDataModule
crops (same crop size, batch size and samples per epoch), starting from the same weights.

Sides:
  plain           for batch in loader: forward (module.forward) → module.loss_fn → backward → AdamW
                  step → LambdaLR step (the schedule of configure_optimizers), loss summed on-device
  lightning       Trainer(conf trainer settings, max_epochs=1), no logger/checkpoint/progress bar,
                  no validation: the epoch loop alone
  lightning-conf  the same plus the project's callbacks (checkpoint, progress bar, LR monitor) and
                  logger (DVCLive), writing into a temp dir: what `python -m mtdefect.train` pays

Modes:
  lockstep (CPU default)  one Lightning epoch in which a callback runs one plain-loop step after
      every Lightning step. Each Lightning interval (end of the previous plain step → end of this
      Lightning step: its data fetch, hooks and step) is paired with the plain step (data fetch
      and step) that runs right after it, so a neighbour's CPU burst lands on both sides alike.
      The overhead is sum(Lightning intervals) / sum(plain steps) - 1, plus two estimates that a
      neighbour's CPU burst (which can hit one step of a pair and not the other) cannot move much:
      the median of the per-pair ratios, and the sum ratio over "calm" pairs (both steps within
      1.5x of the fastest step seen).
  alternate (GPU default) whole epochs alternated (ABBA order, RNG reseeded identically so both see
      the same batches); epoch time from just after the loader's iterator is created (Lightning
      creates it before on_train_epoch_start) to the end of the last step, and the whole fit().
Writes benchmarks/results/bench_train.json (bench_train_gpu.json with --gpu).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from mtdefect.model.module import warmup_cosine  # noqa: E402

GPU_OVERRIDES = [
    "trainer=gpu",
    "model.encoder=resnet18",
    "model.decoder_channels=[256,128,64,32,16]",
    "model.channels_last=true",
    "data.module.crop_size=256",
    "data.module.batch_size=32",
    "data.module.num_workers=8",
    "data.module.pin_memory=true",
    "data.module.samples_per_epoch=2048",
]


# ---------------------------------------------------------------- config and data


def compose_config(overrides: list[str], work: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(C.REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.checkpoint_dir = str(work / "checkpoints")
        cfg.paths.live_dir = str(work / "dvclive")
    return cfg


def prepare_data(kind: str, work: Path, cfg: DictConfig) -> tuple[str, str, str]:
    """(dataset_dir, manifest, description). ``repo``: data/tiles + data/split.csv as DVC left them;
    ``zip``: the shared zip unpacked into a temp dir; ``synthetic``: generated tiles (no dataset)."""
    from mtdefect.data.source import load_dataset
    from mtdefect.data.split import make_split

    repo_dir, repo_manifest = C.REPO / "data" / "tiles", C.REPO / "data" / "split.csv"
    if kind == "auto":
        kind = (
            "repo"
            if (repo_dir / "dataset.json").exists() and repo_manifest.exists()
            else "zip"
            if C.DEFAULT_ZIP.exists()
            else "synthetic"
        )
    if kind == "repo":
        return (
            str(repo_dir),
            str(repo_manifest),
            f"real crops: {repo_dir.relative_to(C.REPO)} + data/split.csv",
        )
    if kind == "zip":
        load_dataset(str(C.DEFAULT_ZIP), work / "tiles")
        make_split(work / "tiles", work / "split.csv", 0.15, 0.15, seed=42, max_per_class=20)
        return (
            str(work / "tiles"),
            str(work / "split.csv"),
            f"real crops: {C.DEFAULT_ZIP.name} (20 per class)",
        )
    tree = write_synthetic_tree(work / "synthetic")
    load_dataset(str(tree), work / "tiles")
    make_split(work / "tiles", work / "split.csv", 0.2, 0.2, seed=0)
    return (
        str(work / "tiles"),
        str(work / "split.csv"),
        "synthetic tiles 324x270 (mtdefect.devtools.synthetic.synthetic_pair)",
    )


def write_synthetic_tree(root: Path, per_class: int = 10) -> Path:
    """Like mtdefect.devtools.synthetic.write_synthetic_tree, at the typical tile size (crops need room)."""
    from mtdefect.devtools.synthetic import CLASSES, TOP, synthetic_pair

    for ci, cls in enumerate(CLASSES):
        folder = root / TOP / cls / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, mask = synthetic_pair(
                ci * 100 + i, defective=cls != "MT_Free", size=(C.FIXED_WH[1], C.FIXED_WH[0])
            )
            (folder / f"exp{ci}_num_{i}.jpg").write_bytes(img)
            (folder / f"exp{ci}_num_{i}.png").write_bytes(mask)
    return root / TOP


# ---------------------------------------------------------------- the two sides


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainLoop:
    def __init__(self, module: pl.LightningModule, datamodule, device: torch.device, precision: str) -> None:
        self.module = module.to(device)
        self.datamodule = datamodule
        self.device = device
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else None
        )
        self.last_loss = float("nan")

    def begin(self) -> None:
        module = self.module
        loader = self.datamodule.train_dataloader()
        self.n_batches = len(loader)
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(len(loader), 1, module.hparams.warmup_epochs)
        )
        module.train()
        self.loss_sum = torch.zeros((), device=self.device)
        self.samples = 0
        self.batches = iter(loader)  # like Lightning's setup_data: workers start before the epoch clock

    def step(self) -> bool:
        """One training step on the next batch; False when the epoch's batches are used up."""
        batch = next(self.batches, None)
        if batch is None:
            return False
        module, device = self.module, self.device
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        if self.autocast is not None:
            with self.autocast:
                loss = module.loss_fn(module(image).float(), mask)
        else:
            loss = module.loss_fn(module(image).float(), mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.loss_sum += loss.detach()
        self.samples += len(image)
        return True

    def finish(self) -> None:
        self.last_loss = float(self.loss_sum) / max(1, self.n_batches)
        self.batches = None

    def epoch(self, limit_batches: int | None = None) -> dict:
        t_fit = time.perf_counter()
        self.begin()
        _sync(self.device)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        ends: list[float] = []
        while (limit_batches is None or len(ends) < limit_batches) and self.step():
            if self.device.type == "cpu":  # per-step clocks only where they cost no synchronisation
                ends.append(time.perf_counter())
            else:
                ends.append(float("nan"))
        _sync(self.device)
        t1 = time.perf_counter()
        cpu1 = time.process_time()
        samples = self.samples
        self.finish()
        return {
            "epoch_s": t1 - t0,
            "fit_s": t1 - t_fit,
            "cpu_s": cpu1 - cpu0,
            "samples": samples,
            "step_s": _intervals(t0, [t for t in ends if t == t]),
        }


def _intervals(t0: float, ends: list[float]) -> list[float]:
    """Seconds from one step's end to the next (data loading and loop overhead included)."""
    return [b - a for a, b in zip([t0, *ends[:-1]], ends)]


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.samples = 0
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = 0.0
        self.ends: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.samples = 0
        self.ends = []
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch["image"])
        if pl_module.device.type == "cpu":
            self.ends.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.t1 = time.perf_counter()
        self.cpu1 = time.process_time()


class Lockstep(pl.Callback):
    """Runs one plain-loop step after every Lightning step and times both (CPU only: no syncs)."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.lightning_s: list[float] = []
        self.plain_s: list[float] = []
        self.lightning_cpu = self.plain_cpu = 0.0
        self.lightning_tail_s = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.plain.begin()
        self.lightning_s, self.plain_s = [], []
        self.lightning_cpu = self.plain_cpu = 0.0
        self.cpu_mark = time.process_time()
        self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t_l, c_l = time.perf_counter(), time.process_time()
        self.lightning_s.append(t_l - self.mark)
        self.lightning_cpu += c_l - self.cpu_mark
        t0, c0 = time.perf_counter(), time.process_time()
        stepped = self.plain.step()
        t1, c1 = time.perf_counter(), time.process_time()
        if stepped:
            self.plain_s.append(t1 - t0)
            self.plain_cpu += c1 - c0
        self.cpu_mark = time.process_time()
        self.mark = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.lightning_tail_s = time.perf_counter() - self.mark
        while self.plain.step():  # Lightning ran out first (it should not): finish the plain epoch untimed
            pass
        self.plain.finish()


class LightningSide:
    def __init__(self, module: pl.LightningModule, datamodule, cfg: DictConfig, full: bool) -> None:
        self.module, self.datamodule, self.cfg, self.full = module, datamodule, cfg, full

    def epoch(self, limit_batches: int | None = None, extra_callbacks: list | None = None) -> dict:
        from mtdefect.train import instantiate_all

        timer = EpochTimer()
        extra_callbacks = list(extra_callbacks or [])
        trainer_cfg = OmegaConf.to_container(self.cfg.trainer, resolve=True)
        trainer_cfg.update(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0)
        trainer_cfg.pop("sync_batchnorm", None)
        if limit_batches is not None:
            trainer_cfg["limit_train_batches"] = limit_batches
        if self.full:
            loggers = instantiate_all(self.cfg.get("logger"))
            callbacks = instantiate_all(self.cfg.get("callbacks"))
            if not loggers:
                callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
            extra = {"logger": loggers or False, "callbacks": [*callbacks, timer, *extra_callbacks]}
        else:
            extra = {
                "logger": False,
                "callbacks": [timer, *extra_callbacks],
                "enable_checkpointing": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
            }
        trainer = instantiate(trainer_cfg, **extra, _convert_="all")
        t_fit = time.perf_counter()
        trainer.fit(self.module, datamodule=self.datamodule)
        _sync(self.module.device)
        fit_s = time.perf_counter() - t_fit
        return {
            "epoch_s": timer.t1 - timer.t0,
            "fit_s": fit_s,
            "cpu_s": timer.cpu1 - timer.cpu0,
            "samples": timer.samples,
            "step_s": _intervals(timer.t0, timer.ends),
        }


# ---------------------------------------------------------------- model-only (GPU) reference


def model_only(module: pl.LightningModule, cfg: DictConfig, device: torch.device, steps: int) -> dict:
    """Forward/backward/step on random tensors already on the device: the ceiling without data loading."""
    module = copy.deepcopy(module).to(device).train()
    bs, size = int(cfg.data.module.batch_size), int(cfg.data.module.crop_size)
    x = torch.randn(bs, 1, size, size, device=device)
    y = (torch.rand(bs, 1, size, size, device=device) > 0.9).float()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    bf16 = str(cfg.trainer.precision).startswith("bf16")

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss_fn(module(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(min(5, steps)):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "batch_size": bs, "crop": size, "images_per_s": steps * bs / seconds}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="CUDA run: resnet18 U-Net, 256² crops, bf16-mixed, channels_last (conf trainer=gpu)",
    )
    parser.add_argument(
        "--mode",
        choices=["auto", "lockstep", "alternate"],
        default="auto",
        help="auto: lockstep on CPU, alternate on CUDA",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="measured epochs per side (default: 1 lockstep, 2 alternate)"
    )
    parser.add_argument("--warmup-batches", type=int, default=3, help="unmeasured batches per side first")
    parser.add_argument("--data", choices=["auto", "repo", "zip", "synthetic"], default="auto")
    parser.add_argument("--sides", default="plain,lightning,lightning-conf")
    parser.add_argument("--override", action="append", default=[], help="Hydra override, repeatable")
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="also time forward/backward on random tensors (always on with --gpu)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--result-name",
        default=None,
        help="results/<name>.json (default bench_train, bench_train_gpu with --gpu)",
    )
    args = parser.parse_args(argv)

    if args.gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available on this machine", file=sys.stderr)
        return 2
    mode = args.mode if args.mode != "auto" else ("alternate" if args.gpu else "lockstep")
    if mode == "lockstep" and args.gpu:
        parser.error("lockstep needs per-step clocks, which would synchronise CUDA: use --mode alternate")
    rounds = args.rounds or (1 if mode == "lockstep" else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine_info()
    work = C.workdir("train")
    overrides = (GPU_OVERRIDES if args.gpu else []) + args.override
    cfg = compose_config(overrides, work)
    dataset_dir, manifest, data_desc = prepare_data(args.data, work, cfg)
    device = torch.device("cuda" if args.gpu else "cpu")
    precision = str(cfg.trainer.precision)
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic", False)), warn_only=True)
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark", False))
    if args.gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def datamodule():
        dm = instantiate(cfg.data.module, dataset_dir=dataset_dir, manifest=manifest, _convert_="all")
        dm.setup("fit")
        return dm

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    base = instantiate(cfg.model, _convert_="all")

    def fresh_module() -> pl.LightningModule:
        module = instantiate(cfg.model, _convert_="all")
        module.load_state_dict(base.state_dict())  # identical starting weights
        return module

    sides: dict[str, PlainLoop | LightningSide] = {}
    for name in args.sides.split(","):
        if name == "plain":
            sides[name] = PlainLoop(fresh_module(), datamodule(), device, precision)
        elif name in ("lightning", "lightning-conf"):
            sides[name] = LightningSide(fresh_module(), datamodule(), cfg, full=name == "lightning-conf")
        else:
            parser.error(f"unknown side {name}")
    if "plain" not in sides:
        parser.error("--sides must include plain")
    dm_cfg = cfg.data.module
    print(f"# bench_train{' --gpu' if args.gpu else ''} ({mode}) — {C.describe_machine(info)}")
    print(
        f"model: {cfg.model.arch} {cfg.model.encoder} decoder {list(cfg.model.decoder_channels)} "
        f"channels_last={cfg.model.channels_last}; trainer precision {precision}, deterministic "
        f"{cfg.trainer.get('deterministic')}; device {device}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"data: {data_desc}; crop {dm_cfg.crop_size}, batch {dm_cfg.batch_size}, samples/epoch "
        f"{dm_cfg.samples_per_epoch}, workers {dm_cfg.num_workers}"
    )

    # warm-up for every side (allocations, kernel choice, cudnn autotune, data in caches)
    for side in sides.values():
        torch.manual_seed(cfg.seed)
        side.epoch(limit_batches=args.warmup_batches)

    result = {
        "machine": info,
        "args": vars(args),
        "mode": mode,
        "overrides": overrides,
        "data": data_desc,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "trainer_precision": precision,
    }
    if mode == "lockstep":
        result["lockstep"] = run_lockstep(sides, rounds, cfg.seed)
    else:
        result["sides"] = run_alternate(sides, rounds, cfg.seed)
    if args.gpu or args.model_only:
        result["model_only"] = model_only(base, cfg, device, steps=50 if args.gpu else 3)
        print(
            f"\nmodel only (random tensors on {device}, no data loading): "
            f"{result['model_only']['images_per_s']:.0f} img/s"
        )
    path = C.write_result(args.result_name or ("bench_train_gpu" if args.gpu else "bench_train"), result)
    print(f"\nwrote {path.relative_to(C.REPO)}")
    return 0


def run_lockstep(sides: dict, rounds: int, seed: int) -> dict:
    plain: PlainLoop = sides["plain"]
    out: dict[str, dict] = {}
    rows = []
    for name, side in sides.items():
        if name == "plain":
            continue
        lightning_s: list[float] = []
        plain_s: list[float] = []
        l_cpu = p_cpu = fit_s = tail_s = 0.0
        samples = 0
        for r in range(rounds):
            torch.manual_seed(seed + 1 + r)
            lock = Lockstep(plain)
            run = side.epoch(extra_callbacks=[lock])
            n = min(len(lock.lightning_s), len(lock.plain_s))
            lightning_s += lock.lightning_s[:n]
            plain_s += lock.plain_s[:n]
            l_cpu += lock.lightning_cpu
            p_cpu += lock.plain_cpu
            tail_s += lock.lightning_tail_s
            fit_s += run["fit_s"] - sum(lock.plain_s)
            samples += run["samples"]
            print(
                f"  round {r + 1} {name:15s} {n} paired steps: Lightning {sum(lock.lightning_s[:n]):.2f} s, "
                f"plain {sum(lock.plain_s[:n]):.2f} s",
                flush=True,
            )
        paired = [a / b for a, b in zip(lightning_s, plain_s)]
        l_total, p_total = sum(lightning_s), sum(plain_s)
        # "calm" pairs: neither step slowed by a neighbour's burst (both within 1.5x of the fastest step)
        floor = min(lightning_s + plain_s)
        calm = [(a, b) for a, b in zip(lightning_s, plain_s) if max(a, b) <= 1.5 * floor]
        s = {
            "paired_steps": len(paired),
            "samples": samples,
            "lightning_s": l_total,
            "plain_s": p_total,
            "lightning_epoch_tail_s": tail_s,
            "lightning_fit_s_excl_plain": fit_s,
            "lightning_images_per_s": samples / (l_total + tail_s),
            "plain_images_per_s": samples / p_total,
            "overhead_pct": 100 * ((l_total + tail_s) / p_total - 1),
            "overhead_pct_paired_median": 100 * (statistics.median(paired) - 1),
            "calm_pairs": len(calm),
            "overhead_pct_calm_pairs": (
                100 * (sum(a for a, _ in calm) / sum(b for _, b in calm) - 1) if calm else float("nan")
            ),
            "overhead_pct_cpu": 100 * (l_cpu / p_cpu - 1),
            "overhead_pct_incl_setup": 100 * (fit_s / p_total - 1),
            "lightning_step_s": lightning_s,
            "plain_step_s": plain_s,
        }
        out[name] = s
        rows.append(
            [
                name,
                s["paired_steps"],
                s["plain_images_per_s"],
                s["lightning_images_per_s"],
                f"{s['overhead_pct']:+.1f}%",
                f"{s['overhead_pct_paired_median']:+.1f}%",
                f"{s['overhead_pct_calm_pairs']:+.1f}% ({s['calm_pairs']})",
                f"{s['overhead_pct_cpu']:+.1f}%",
                f"{s['overhead_pct_incl_setup']:+.1f}%",
            ]
        )
    print(f"\n### one training epoch, Lightning vs plain loop in lockstep ({rounds} epoch(s) each)\n")
    print(
        C.table(
            [
                "Lightning side",
                "paired steps",
                "plain img/s",
                "Lightning img/s",
                "overhead (all steps)",
                "overhead (median pair)",
                "overhead (calm pairs)",
                "overhead (CPU time)",
                "overhead incl. fit() setup",
            ],
            rows,
        )
    )
    return out


def run_alternate(sides: dict, rounds: int, seed: int) -> dict:
    names = list(sides)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            torch.manual_seed(seed + 1 + r)  # the same batches for every side in this round
            runs[name].append(sides[name].epoch())
            last = runs[name][-1]
            print(
                f"  round {r + 1} {name:15s} epoch {last['epoch_s']:.2f} s "
                f"({last['samples'] / last['epoch_s']:.1f} img/s), CPU {last['cpu_s']:.1f} s, "
                f"fit {last['fit_s']:.2f} s",
                flush=True,
            )
    summary = {}
    for name, rs in runs.items():
        epochs = [x["epoch_s"] for x in rs]
        fits = [x["fit_s"] for x in rs]
        samples = rs[0]["samples"]
        summary[name] = {
            "samples_per_epoch": samples,
            "epoch_s_median": statistics.median(epochs),
            "epoch_s_all": epochs,
            "fit_s_median": statistics.median(fits),
            "fit_s_all": fits,
            "cpu_s_median": statistics.median(x["cpu_s"] for x in rs),
            "images_per_s": samples / statistics.median(epochs),
            "images_per_s_incl_setup": samples / statistics.median(fits),
        }
    plain = summary["plain"]
    rows = []
    for name, s in summary.items():
        if name != "plain":
            s["overhead_pct_epoch"] = 100 * (s["epoch_s_median"] / plain["epoch_s_median"] - 1)
            s["overhead_pct_fit"] = 100 * (s["fit_s_median"] / plain["fit_s_median"] - 1)

        def pct(key: str, s: dict = s) -> str:
            return f"{s[key]:+.1f}%" if key in s else "–"

        rows.append(
            [
                name,
                s["samples_per_epoch"],
                s["images_per_s"],
                s["epoch_s_median"],
                s["fit_s_median"],
                pct("overhead_pct_epoch"),
                pct("overhead_pct_fit"),
            ]
        )
    print(f"\n### one training epoch, {rounds} alternating rounds (medians)\n")
    print(
        C.table(
            ["side", "images", "img/s", "epoch s", "fit() s", "overhead (epoch)", "overhead incl. setup"],
            rows,
        )
    )
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
