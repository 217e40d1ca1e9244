"""The benchmarks' harness: machine and environment record, interleaved timing, the model folder and
its record, real images, stats and tables, and the result writer.

Run by hand (never by ``make test``); every script answers one question and writes
``benchmarks/results/<name>.json`` (benchmarks/README.md lists them).
"""

from __future__ import annotations

import atexit
import csv
import datetime as _dt
import io
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ZIP = Path(os.environ.get("MT_SHARED_ZIP", REPO.parent / "shared" / "data" / "magnetic-tiles.zip"))
MANIFEST = REPO / "data" / "split.csv"
TOP = "Magnetic-tile-defect-datasets.-master"

# The "typical tile" of the issue: 270 wide x 324 high (numpy shape (324, 270)); padded to 288x352.
FIXED_WH = (270, 324)

if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers across runs (and why they may be noisy)."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    for module in (
        "torch",
        "onnxruntime",
        "numpy",
        "bentoml",
        "lightning",
        "segmentation_models_pytorch",
        "timm",
    ):
        try:
            info[f"{module}_version"] = __import__(module).__version__
        except Exception:  # not installed, or no __version__
            info[f"{module}_version"] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except Exception:
        pass
    return info


def describe_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_model']}, {info['cpu_count']} CPUs, {info.get('memory_gib', '?')} GiB | "
        f"torch {info.get('torch_version')} | onnxruntime {info.get('onnxruntime_version')} | "
        f"python {info['python']} | {info['date']} | load avg at start {info['load_average_at_start']}"
    )


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json, written atomically (tmp file + rename) as strict JSON
    (a NaN, e.g. the percentile of no samples, is written ``null``)."""
    from mtdefect.fileio import dumps_strict, write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("machine", {})["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = dumps_strict(payload, indent=2, sort_keys=False, default=_jsonable) + "\n"
    return write_text_atomic(RESULTS / f"{name}.json", text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- timing


def timed_ms(fn: Callable[..., Any], *args: Any) -> float:
    """Wall-clock milliseconds of one call."""
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000.0


def interleaved_ms(
    fns: dict[str, Callable[[Any], Any]], inputs: Sequence[Any], rounds: int = 1
) -> dict[str, list[float]]:
    """Every input through every function, ``rounds`` times, the order rotated by one per input, so a
    change of machine load hits every function alike. Returns each function's milliseconds, one per
    (round, input), aligned across functions (for paired ratios: ``paired_median``)."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    k = 0
    for _ in range(rounds):
        for x in inputs:
            shift = k % len(names)
            k += 1
            for name in names[shift:] + names[:shift]:
                times[name].append(timed_ms(fns[name], x))
    return times


def paired_median(times: Sequence[float], base: Sequence[float]) -> float:
    """Median over aligned pairs of ``time / base``: robust to load that drifts during a run."""
    return float(statistics.median(t / b for t, b in zip(times, base, strict=True)))


# ---------------------------------------------------------------- stats and tables


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "mean_ms": float(statistics.fmean(ms)) if ms else float("nan"),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "min_ms": float(min(ms)) if ms else float("nan"),
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (prints fine in a terminal, pastes into docs as is)."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "–"
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    rows = [[fmt(v) for v in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)
    ]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- images


def _zip_members(zf: zipfile.ZipFile) -> list[str]:
    return sorted(n for n in zf.namelist() if "/MT_" in n and "/Imgs/" in n and n.lower().endswith(".jpg"))


def real_image_bytes(n: int, zip_path: Path = DEFAULT_ZIP, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` real JPEG tiles read straight from the dataset zip (never extracted).

    The held-out test split of data/split.csv comes first when it exists; the rest is a seeded
    random sample of the archive (speed depends on image size only, not on which tile it is).
    """
    if not zip_path.exists():
        raise FileNotFoundError(f"dataset zip not found at {zip_path} (set MT_SHARED_ZIP)")
    with zipfile.ZipFile(zip_path) as zf:
        members = _zip_members(zf)
        by_rel = {"/".join(m.split("/")[-3::2]): m for m in members}  # MT_Class/<stem>.jpg
        chosen: list[str] = []
        if MANIFEST.exists():
            with MANIFEST.open() as fh:
                for row in csv.DictReader(fh):
                    if row.get("split") == "test" and row["image"] in by_rel:
                        chosen.append(by_rel[row["image"]])
        rest = [m for m in members if m not in set(chosen)]
        random.Random(seed).shuffle(rest)
        chosen = (chosen + rest)[:n]
        return [(m, zf.read(m)) for m in chosen]


def decode_all(items: list[tuple[str, bytes]]) -> list[np.ndarray]:
    from mtdefect.inference import decode_image

    return [decode_image(data) for _, data in items]


def fixed_tile(zip_path: Path = DEFAULT_ZIP) -> np.ndarray:
    """A real tile resized to exactly 270x324 (width x height): the issue's 'typical tile'."""
    from PIL import Image

    w, h = FIXED_WH
    if zip_path.exists():
        with zipfile.ZipFile(zip_path) as zf:
            members = _zip_members(zf)
            best, best_d = members[0], None
            for m in members[:: max(1, len(members) // 200)]:  # a quick scan is enough
                with Image.open(io.BytesIO(zf.read(m))) as img:
                    d = abs(img.size[0] - w) + abs(img.size[1] - h)
                if best_d is None or d < best_d:
                    best, best_d = m, d
            with Image.open(io.BytesIO(zf.read(best))) as img:
                return np.asarray(img.convert("L").resize((w, h), Image.BILINEAR), dtype=np.uint8)
    rng = np.random.default_rng(0)  # no dataset: a textured synthetic tile of the same size
    return np.clip(rng.normal(120, 15, (h, w)), 0, 255).astype(np.uint8)


def jpeg_bytes(gray: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------- the model folder


def resolve_model_dir(model_dir: str | None, workdir: Path) -> tuple[Path, str]:
    """A model folder with settings.json, weights.safetensors and model.onnx, and where it came from.

    Order: --model-dir; the trained model (models/segmenter + models/onnx/model.onnx, linked
    into one folder); the newest model in the repo's BentoML store (.bentoml); else the default
    config's network with random weights (network speed does not depend on weight values; the
    postprocessing's does, a little, through the number of regions), exported to ONNX.
    """
    from mtdefect.inference.settings import ONNX_FILE, ONNX_INT8_FILE, SETTINGS_FILE, WEIGHTS_FILE

    if model_dir:
        path = Path(model_dir)
        if not (path / ONNX_FILE).exists():
            from mtdefect.export import export_onnx

            copy = workdir / "model"
            shutil.copytree(path, copy)
            export_onnx(copy)
            return copy, f"{path} (exported to ONNX here)"
        return path, str(path)
    trained, onnx = REPO / "models" / "segmenter", REPO / "models" / "onnx" / ONNX_FILE
    if (trained / SETTINGS_FILE).exists() and (trained / WEIGHTS_FILE).exists() and onnx.exists():
        path = workdir / "model"
        path.mkdir(parents=True, exist_ok=True)
        for source in (trained / SETTINGS_FILE, trained / WEIGHTS_FILE, onnx, onnx.with_name(ONNX_INT8_FILE)):
            if source.exists():
                (path / source.name).symlink_to(source.resolve())
        return path, "models/segmenter + models/onnx (trained)"
    store = REPO / ".bentoml" / "models" / "magnetic-tile-segmenter"
    if (store / "latest").exists():
        version = store / (store / "latest").read_text().strip()
        if all((version / f).exists() for f in (SETTINGS_FILE, WEIGHTS_FILE, ONNX_FILE)):
            path = workdir / "model"
            path.mkdir(parents=True, exist_ok=True)
            for name in (SETTINGS_FILE, WEIGHTS_FILE, ONNX_FILE, ONNX_INT8_FILE):
                if (version / name).exists():
                    (path / name).symlink_to((version / name).resolve())
            return path, f".bentoml store magnetic-tile-segmenter:{version.name} (trained)"
    return random_model_dir(workdir / "model"), "default config, random weights"


def describe_model(model_dir: Path, source: str, **extra: Any) -> dict[str, Any]:
    """What a result records about its model: where it came from, its network (arch, encoder, ...),
    its test-time flips and which exports it has, read from the folder (so the README can name the
    model). Pass ``backend=`` (and ``precision=``) for what was timed."""
    from mtdefect.inference.settings import ONNX_FILE, ONNX_INT8_FILE, SETTINGS_FILE

    settings = json.loads((Path(model_dir) / SETTINGS_FILE).read_text())
    net = settings.get("net", {})
    return {
        "source": source,
        "net": net,
        "encoder": net.get("encoder"),
        "test_time_flips": list(settings.get("test_time_flips", [])),
        "preprocess": settings.get("preprocess", {}),
        "exports": [n for n in (ONNX_FILE, ONNX_INT8_FILE) if (Path(model_dir) / n).exists()],
        "weights_trained": "random" not in source,
        **extra,
    }


PRECISION = {"onnx": "fp32", "onnx-int8": "int8", "torch": "fp32", "torch-cpu": "fp32"}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ensure_int8(model_dir: Path, n_calibration: int = 32) -> bool:
    """Write model.int8.onnx into ``model_dir`` when it is missing (calibrated on training tiles of
    data/tiles, as the export stage does). Returns True when it had to be made here."""
    from mtdefect.inference.settings import ONNX_INT8_FILE

    if (Path(model_dir) / ONNX_INT8_FILE).exists():
        return False
    from mtdefect.inference.quantize import quantize_model_dir

    images = decode_all(real_image_bytes(n_calibration, seed=1))
    quantize_model_dir(Path(model_dir), images, formats=("qdq",))
    return True


def default_net_config() -> dict[str, Any]:
    """The network of conf/model/unet.yaml (read from the file, so it follows the config)."""
    import yaml

    conf = yaml.safe_load((REPO / "conf" / "model" / "unet.yaml").read_text())
    head = conf.get("head") or {}
    return {
        "arch": conf.get("arch", "Unet"),
        "encoder": conf.get("encoder", "resnet10t"),
        "in_channels": int(conf.get("in_channels", 1)),
        "classes": 1,
        "decoder_channels": [int(c) for c in conf.get("decoder_channels", [128, 64, 32, 16, 16])],
        # the tile head (tile_classes is an interpolation of the data config's six classes)
        "tile_classes": 6 if conf.get("tile_classes") else 0,
        "head_stages": int(head.get("stages", 2)),
    }


def random_model_dir(out: Path) -> Path:
    import torch

    from mtdefect.export import export_onnx
    from mtdefect.inference.network import build_net
    from mtdefect.inference.settings import ModelSettings, PostprocessSettings, PreprocessSettings
    from mtdefect.model.bundle import write_model_dir

    torch.manual_seed(0)
    config = default_net_config()
    net = build_net(**config).eval()
    names = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Free", "MT_Uneven")
    settings = ModelSettings(
        net=config,
        preprocess=PreprocessSettings(per_image=True),
        postprocess=PostprocessSettings(),
        class_names=names if config["tile_classes"] else (),
        info={"purpose": "benchmark (random weights)"},
    )
    write_model_dir(net, settings, out)
    export_onnx(out)
    return out


def workdir(prefix: str) -> Path:
    """A temp dir for this run (model links, BentoML home, server logs), removed at exit unless
    MT_BENCH_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix=f"mtbench-{prefix}-"))
    if os.environ.get("MT_BENCH_KEEP", "") != "1":
        atexit.register(shutil.rmtree, path, True)
    return path
