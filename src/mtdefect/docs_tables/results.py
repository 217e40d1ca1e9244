"""The README's ``results`` block: one row per run (or per set of seeds) of the pipeline, test split.

Which files feed which row is declared once, in ``RESULT_ROWS``; ``--save-seed`` bundles a finished
run into one file those rows read (``save_seed``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtdefect.docs_tables.common import fmt, mean_std, read_json, table
from mtdefect.fileio import write_json_atomic

# One dict per row. "baseline" rows read one run's files; "seeds" rows aggregate every file matching
# the glob. "hardware" is what the run was measured on (not recorded by the pipeline: say it here
# when you commit a run from another machine).
RESULT_ROWS: list[dict[str, str]] = [
    {
        "kind": "baseline",
        "run": "**CPU default** (`dvc exp run`), seed {seed}",
        "hardware": "2-core Intel Xeon (AVX512-BF16, AMX), no GPU",
        "metrics": "reports/metrics.json",
        "validation": "reports/validation.json",
        "params": "params.yaml",
    },
    {
        "kind": "seeds",
        "run": "CPU default, **{n} seeds ({seeds}): mean ± std**",
        "hardware": "2-core AMD EPYC (AVX512-BF16), no GPU (trained two at a time, one thread each)",
        "glob": "reports/seeds/*.json",
    },
    {
        "kind": "seeds",
        "run": "**`experiment=cpu_2h`**, seed {seeds}",
        "hardware": "2-core AMD EPYC (one thread, beside the default's seeds)",
        "glob": "reports/experiments/cpu_2h/*.json",
    },
    {
        "kind": "seeds",
        "run": "CPU default on the old image-by-image split (the same tile under another light in train "
        "and test; replaced by the tile-grouped split), {n} seeds ({seeds})",
        "hardware": "2-core AMD EPYC",
        "glob": "reports/seeds_image_split/*.json",
    },
]


def _run(metrics: dict, validation: dict, params: dict, seed: Any = None) -> dict[str, Any]:
    """One run's numbers, as the table shows them."""
    test = metrics["test"]
    model = params.get("model", {})
    flips = test.get("test_time_flips") or "none"
    return {
        "seed": seed if seed is not None else params.get("seed"),
        "model": f"{model.get('arch', '?')} {model.get('encoder', '?')}",
        "flips": flips if isinstance(flips, str) else "+".join(flips) or "none",
        "train_min": validation.get("train/seconds", float("nan")) / 60,
        "val_dice": validation.get("val/dice"),
        "dice": test.get("dice"),
        "iou": test.get("iou"),
        "dice_ungated": test.get("dice_ungated"),
        "per_class": test.get("per_class_dice", {}),
        "recall": test.get("detection", {}).get("recall"),
        "false_alarm_rate": test.get("detection", {}).get("false_alarm_rate"),
        "auroc": test.get("detection", {}).get("auroc"),
        "mean_class_dice": test.get("mean_class_dice"),
        "class_accuracy": test.get("classification", {}).get("accuracy"),
        "decision": test.get("score_source", "mask"),
    }


def run_params(root: Path, params_file: str = "params.yaml") -> dict[str, Any]:
    """The seed and model the committed outputs were produced with: the train stage's params as
    dvc.lock records them (params.yaml may already hold the next experiment's config), else
    params.yaml itself."""
    lock = root / "dvc.lock"
    if lock.exists():
        train = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("train", {})
        recorded = train.get("params", {}).get(params_file, {})
        if "model" in recorded:
            return {"seed": recorded.get("seed"), "model": recorded["model"]}
    params = yaml.safe_load((root / params_file).read_text()) or {}
    return {"seed": params.get("seed"), "model": params.get("model", {})}


def save_seed(root: Path, out: Path) -> Path:
    """Bundle the current run (its params, reports/metrics.json, reports/validation.json) into one file."""
    params = run_params(root)
    payload = {
        "seed": params["seed"],
        "params": params,
        "metrics": read_json(root / "reports" / "metrics.json"),
        "validation": read_json(root / "reports" / "validation.json"),
    }
    return write_json_atomic(out, payload, indent=2, sort_keys=True)


def result_runs(root: Path, row: dict[str, str]) -> list[dict[str, Any]]:
    if row["kind"] == "baseline":
        paths = [root / row[k] for k in ("metrics", "validation")]
        if not all(p.exists() for p in paths):
            return []
        return [_run(read_json(paths[0]), read_json(paths[1]), run_params(root, row["params"]))]
    runs = []
    for path in sorted(root.glob(row["glob"])):
        data = read_json(path)
        runs.append(_run(data["metrics"], data["validation"], data.get("params", {}), data.get("seed")))
    return sorted(runs, key=lambda r: (r["seed"] is None, r["seed"]))


def _baseline_cells(row: dict[str, str], r: dict[str, Any], classes: list[str]) -> list[str]:
    """One run as it is: its seed, model, every metric to three digits."""
    return [
        row["run"].format(seed=r["seed"]),
        f"{r['model']} ({r['flips']})",
        row["hardware"],
        f"{r['train_min']:.1f} min",
        fmt(r["val_dice"]),
        f"{fmt(r['dice'])} / {fmt(r['iou'])}",
        fmt(r["dice_ungated"]),
        *(fmt(r["per_class"].get(c)) for c in classes),
        fmt(r["mean_class_dice"]),
        r["decision"],
        fmt(r["recall"]),
        fmt(r["false_alarm_rate"]),
        fmt(r["auroc"]),
        fmt(r["class_accuracy"]),
    ]


def _seeds_cells(row: dict[str, str], runs: list[dict[str, Any]], classes: list[str]) -> list[str]:
    """Several seeds of one config: mean ± sample std of every metric, the models and flips counted."""

    def each(key: str) -> list[Any]:
        return [r[key] for r in runs]

    models = sorted({r["model"] for r in runs})
    flips = ", ".join(
        f"{name} ×{sum(r['flips'] == name for r in runs)}" for name in sorted({r["flips"] for r in runs})
    )
    return [
        row["run"].format(n=len(runs), seeds=", ".join(str(r["seed"]) for r in runs)),
        f"{' / '.join(models)} ({flips})",
        row["hardware"],
        f"{mean_std(each('train_min'), 1)} min",
        mean_std(each("val_dice")),
        f"{mean_std(each('dice'))} / {mean_std(each('iou'))}",
        mean_std(each("dice_ungated")),
        *(mean_std([r["per_class"].get(c) for r in runs]) for c in classes),
        mean_std(each("mean_class_dice")),
        "/".join(sorted({r["decision"] for r in runs})),
        mean_std(each("recall")),
        mean_std(each("false_alarm_rate")),
        mean_std(each("auroc")),
        mean_std(each("class_accuracy")),
    ]


def results_table(root: Path) -> str:
    rows_runs = [(row, result_runs(root, row)) for row in RESULT_ROWS]
    classes = sorted({c for _, runs in rows_runs for run in runs for c in run["per_class"]})
    header = [
        "run",
        "model (test-time flips)",
        "hardware",
        "train",
        "val Dice",
        "test Dice / IoU",
        "ungated Dice",
        *(c.removeprefix("MT_") for c in classes),
        "mean class Dice",
        "decision",
        "recall",
        "false alarms",
        "AUROC",
        "class top-1",
    ]
    rows = [
        _baseline_cells(row, runs[0], classes)
        if row["kind"] == "baseline"
        else _seeds_cells(row, runs, classes)
        for row, runs in rows_runs
        if runs
    ]
    if not rows:
        return "_No run results committed yet (`reports/metrics.json`)._\n"
    note = (
        "Generated by `make docs` from `reports/metrics.json`, `reports/validation.json`, the train"
        " params in `dvc.lock`, `reports/seeds/*.json` and the files each row names; test split unless"
        " marked val."
    )
    return "\n".join([note, "", *table(header, rows)]) + "\n"
