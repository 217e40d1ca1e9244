"""The cross-validation table: one row per recipe, from ``reports/cv/metrics.json`` (the default) and
``reports/cv/<recipe>/metrics.json`` (each recipe compared), pooled out-of-fold with 95 % intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtdefect.docs_tables.common import fmt, read_json, table

CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def with_interval(entry: dict[str, Any] | None) -> str:
    """``0.712 [0.65, 0.77]`` from ``{"value", "ci_low", "ci_high"}``."""
    if not entry or entry.get("value") is None:
        return "—"
    if entry.get("ci_low") is None:
        return fmt(entry["value"])
    return f"{fmt(entry['value'])} [{fmt(entry['ci_low'], 2)}, {fmt(entry['ci_high'], 2)}]"


def recipe_files(root: Path) -> list[tuple[str, Path]]:
    base = root / "reports" / "cv"
    found = [("default", base / "metrics.json")] if (base / "metrics.json").exists() else []
    found += [(p.parent.name, p) for p in sorted(base.glob("*/metrics.json"))]
    return found


def folds_label(summary: dict[str, Any]) -> str:
    """``5``, or ``2 of 5`` when only some folds of the partition are pooled (a partial run)."""
    pooled = summary.get("folds_pooled") or []
    return f"{len(pooled)} of {summary['k']}" if pooled and len(pooled) < summary["k"] else str(summary["k"])


def pad_label(recipe: dict[str, Any]) -> str:
    """The stride padding the held-out images were scored with (``edge`` for models saved before the
    setting existed), and whether the fold models were trained with another one."""
    trained = recipe.get("preprocess_pad") or "edge"
    rescored = ((recipe.get("rescored_with") or {}).get("preprocess") or {}).get("pad")
    return f"{rescored} (trained with {trained})" if rescored and rescored != trained else trained


def gate_label(recipe: dict[str, Any]) -> str:
    """Where the mask is gated: at the reject decision (summaries written before the mask gate
    existed, or ``max_region_rate`` null), or at a gate that at most that share of clean tiles passes."""
    calibration = (recipe.get("rescored_with") or {}).get("calibration") or {}
    rate = calibration.get("max_region_rate", recipe.get("max_region_rate"))
    return "at decision" if rate is None else f"≤ {rate:g} clean"


def extras_label(recipe: dict[str, Any]) -> str:
    """What a recipe adds beyond the columns every row names: photometric augmentation, test-time
    flips forced by a rescore, an EMA of the weights, the head-refit rule, and a decision source
    picked otherwise than by validation recall (by AUROC, or the head whenever the model has one;
    summaries without the key predate the choice and used validation recall)."""
    parts = []
    if recipe.get("gamma") or recipe.get("illumination"):
        parts.append(
            f"photometric gamma {recipe.get('gamma') or 0:g} / ramp {recipe.get('illumination') or 0:g}"
        )
    calibration = (recipe.get("rescored_with") or {}).get("calibration") or {}
    criterion = calibration.get("decision_criterion", recipe.get("decision_criterion"))
    if calibration.get("score_windows") == []:
        parts.append("decision by the head only")
    elif criterion == "auroc":
        parts.append("decision source by AUROC")
    elif criterion == "head":
        parts.append("decision by the head")
    averaging = recipe.get("weight_averaging")
    if averaging:
        parts.append(f"EMA {averaging['decay']:g} from step {averaging.get('start_step') or 0}")
    flip_sets = [flips for flips in calibration.get("test_time_flips") or [] if flips]
    if flip_sets:
        parts.append("test-time flips " + " or ".join("+".join(flips) for flips in flip_sets))
    parts += head_refit_parts(recipe)
    return "".join(f", {part}" for part in parts)


def head_refit_parts(recipe: dict[str, Any]) -> list[str]:
    """How the served head was chosen where it differs from the old rule (the crop-trained head kept
    where it validated better; summaries without the keys used that rule): always refitted on whole
    tiles, the hardest clean training tiles weighted, and a clean-vs-defect objective."""
    head = {
        **(recipe.get("head_refit") or {}),
        **((recipe.get("rescored_with") or {}).get("head_refit") or {}),
    }
    parts = []
    if head.get("keep_current_head") is False:
        parts.append("head always refitted")
    weight = head.get("hard_negative_weight")
    if weight is not None and float(weight) != 1.0:
        parts.append(f"hardest clean tiles ×{float(weight):g} in the refit")
    if head.get("objective", "multinomial") != "multinomial":
        parts.append(f"{head['objective']} head objective")
    return parts


def cv_row(name: str, summary: dict[str, Any]) -> list[str]:
    recipe = summary.get("recipe") or {}
    per_class = summary.get("per_class_dice") or {}
    seconds = summary.get("fold_seconds") or []
    minutes = sum(seconds) / len(seconds) / 60 if seconds else 0.0
    tile = ((summary.get("per_tile") or {}).get("median") or {}).get("tile_recall_at_1pct_fa")
    return [
        f"`{name}` ({recipe.get('encoder', '?')}, crop {recipe.get('crop_size', '?')}, "
        f"scale {recipe.get('preprocess_scale', '?')}, pad {pad_label(recipe)}, "
        f"mask gate {gate_label(recipe)}, paste {recipe.get('paste_p') or 0:g}{extras_label(recipe)}, "
        f"seed {recipe.get('seed', '?')})",
        f"{folds_label(summary)} / {summary['images']} / {summary['groups']}",
        with_interval(summary.get("dice")),
        " / ".join(fmt((per_class.get(c) or {}).get("value"), 2) for c in CLASSES),
        with_interval(summary.get("auroc")),
        with_interval(summary.get("recall_at_1pct_fa")),
        f"{with_interval(summary.get('recall_at_decision'))} @ "
        f"{fmt((summary.get('false_alarm_rate_at_decision') or {}).get('value'))}",
        with_interval(summary.get("class_top1")),
        with_interval(summary.get("border_fp_share")),
        with_interval(summary.get("clean_region_rate")),
        with_interval(tile),
        f"{minutes:.0f} min" if minutes else "—",
    ]


def cv_table(root: Path) -> str:
    """The table body (between the ``cv`` markers); a note when no run is committed yet."""
    files = recipe_files(root)
    if not files:
        return "_No cross-validation run is committed yet (`make cv` writes reports/cv/metrics.json)._\n"
    header = [
        "recipe",
        "folds / images / tile groups",
        "Dice [95 % CI]",
        "Blowhole / Break / Crack / Fray / Uneven",
        "AUROC",
        "recall @ ≤ 1 % FA",
        "recall @ each fold's decision (FA)",
        "class top-1",
        "FP pixels in border band",
        "clean images showing regions",
        "per tile (median of its views): recall @ ≤ 1 % FA",
        "wall time per fold",
    ]
    rows = [cv_row(name, read_json(path)) for name, path in files]
    return "\n".join(table(header, rows)) + "\n"
