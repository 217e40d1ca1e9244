"""Head-refit levers judged on cached features: many variants of the refit for one encoder pass.

A head-refit lever changes only the tile head's linear layer on a fixed encoder, so every variant of
one fold model sees the same pooled head inputs. They are computed once per fold model (its
training tiles with their flipped copies, its inner-validation tiles and its held-out tiles, each
read and preprocessed as the service reads an upload) and cached; a variant is then only a fit
(``model.head_fit.fit_softmax``; its L2 strength chosen on the inner validation as ``select`` says)
and its held-out scores on the decision's scale: the robust z of the head's logit against the fold's
clean validation images, which is what a served threshold is set on (``cv.decision.normalised``).
Each variant's gain over the config's own rule (``head_refit`` in params.yaml) is paired on the same
images (``cv.decision.paired_gain``), intervals by tile group. Several model roots (seeds, recipes)
pool as one run each side. This is a screen: a lever it favours is confirmed through the service's
path with ``python -m mtdefect.cv.rescore NAME head_refit.<field>=<value>`` before it is kept.

    python -m mtdefect.screen.head_refit OUT.json MODEL_ROOT [MODEL_ROOT ...] [--cache DIR] \
        [--only binary,no_flips]

``--only`` fits just the variants named (with ``config`` always), to confirm a few levers on more
fold models without paying for every fit.

Each MODEL_ROOT holds ``fold_<k>/`` model folders trained on the fold manifests of ``cv.manifest_dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from mtdefect import metrics
from mtdefect.cv.decision import normalised, paired_gain, scorer_summary
from mtdefect.cv.pool import pooling_arguments, tile_ids
from mtdefect.data.folds import fold_manifest_path, group_ids
from mtdefect.data.split import read_manifest
from mtdefect.fileio import sha256_file, write_json_atomic
from mtdefect.inference.postprocess import defect_probability

VIEWS = ("none", "horizontal", "vertical")  # the cached training views, in this order
BASELINE = "config"


# how the variants' scores were computed (screens before session 18: 1 − P(free) in float32)
DEFECT_SCORE = "P(defect): the defect classes' probabilities summed, float64 (postprocess.defect_probability)"


def variants(head_refit: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The levers screened, each a full spec; ``config`` is the rule params.yaml trains with."""
    base = {
        "l2": [float(v) for v in head_refit.get("l2", (1e-4,))],
        "flips": list(head_refit.get("flips", ())),
        "objective": "multinomial",
        "select": "auroc",
    }
    wide = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    return {
        BASELINE: base,
        "saved_head": {**base, "objective": "saved"},
        "l2_wide_grid": {**base, "l2": wide},
        **{f"l2_fixed_{v:g}": {**base, "l2": [v]} for v in (1e-5, 1e-3, 1e-1, 1.0, 10.0)},
        "flips_horizontal_vertical": {**base, "flips": ["horizontal", "vertical"]},
        "no_flips": {**base, "flips": []},
        "binary": {**base, "objective": "binary"},
        "binary_l2_wide_grid": {**base, "objective": "binary", "l2": wide},
        "select_recall_at_10pct_fa": {**base, "select": "recall_at_10pct_fa"},
        "l2_wide_select_recall_at_10pct_fa": {**base, "l2": wide, "select": "recall_at_10pct_fa"},
        "clean_weight_3": {**base, "clean_weight": 3.0},
        "clean_weight_10": {**base, "clean_weight": 10.0},
        "unbalanced": {**base, "clean_weight": "unbalanced"},
        "mlp_64": {**base, "objective": "mlp", "hidden": 64, "l2": [1e-3, 1e-2]},
        "mlp_256": {**base, "objective": "mlp", "hidden": 256, "l2": [1e-3, 1e-2]},
    }


def clean_weights(
    labels: torch.Tensor, free: int, classes: int, clean_weight: float | str
) -> torch.Tensor | None:
    """Row weights on top of ``fit_softmax``'s class balance: the clean rows ×``clean_weight``, or
    ``"unbalanced"``: every row weighs the same (the balance undone); None for the plain fit."""
    if clean_weight == 1.0:
        return None
    if clean_weight == "unbalanced":
        from mtdefect.model.head_fit import balanced_class_weights

        return 1.0 / balanced_class_weights(labels, classes).double()[labels]
    return torch.where(labels == free, float(clean_weight), 1.0).double()


def fold_features(
    model_dir: Path, data_dir: Path, manifest: Path, group_gap: int | None
) -> dict[str, np.ndarray]:
    """The pooled head inputs of a fold manifest's tiles under the fold model's own preprocessing:
    ``train`` (views × N × D, the views of ``VIEWS``), ``val`` and ``test`` (N × D), their class
    indices, the held-out tiles' names, classes and tile groups, and the model's saved head."""
    from mtdefect.inference import ModelSettings
    from mtdefect.inference.predictor import load_torch_net
    from mtdefect.model.head_fit import pooled_features
    from mtdefect.scoring import read_image

    settings = ModelSettings.load(model_dir)
    net = load_torch_net(model_dir, settings)
    index = {name: i for i, name in enumerate(settings.class_names)}
    out: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        records = read_manifest(manifest, split)
        images = [read_image(data_dir, r.image) for r in records]
        flips = VIEWS[1:] if split == "train" else ()
        pooled = pooled_features(net, images, settings.preprocess, flips).numpy()
        out[split] = pooled.reshape(1 + len(flips), len(records), -1) if flips else pooled
        out[f"{split}_labels"] = np.array([index[r.class_name] for r in records])
    held_out = read_manifest(manifest, "test")
    everyone = read_manifest(manifest)
    groups = group_ids([(r.class_name, Path(r.image).stem) for r in everyone], group_gap)
    out["test_images"] = np.array([r.image for r in held_out])
    out["test_classes"] = np.array([r.class_name for r in held_out])
    out["test_groups"] = np.array([groups[(r.class_name, Path(r.image).stem)] for r in held_out])
    out["class_names"] = np.array(settings.class_names)
    out["saved_weight"] = net.head.linear.weight.detach().numpy()
    out["saved_bias"] = net.head.linear.bias.detach().numpy()
    return out


def cached_fold_features(
    model_dir: Path, data_dir: Path, manifest: Path, group_gap: int | None, cache: Path
) -> dict[str, np.ndarray]:
    """``fold_features``, kept in ``cache`` under the digest of the weights, the settings and the
    manifest (an .npz read back without pickle)."""
    digest = hashlib.sha256(
        "".join(
            sha256_file(p) for p in (model_dir / "weights.safetensors", model_dir / "settings.json", manifest)
        ).encode()
    ).hexdigest()[:20]
    path = cache / f"{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    features = fold_features(model_dir, data_dir, manifest, group_gap)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npz")
    np.savez(partial, **features)
    partial.replace(path)
    return features


def fold_models(root: Path) -> list[int]:
    """The folds whose model ``root/fold_<k>/`` holds (a folder with its ``settings.json``), sorted."""
    folds = sorted(int(p.name.split("_")[1]) for p in root.glob("fold_*") if (p / "settings.json").exists())
    if not folds:
        raise FileNotFoundError(f"{root} holds no fold_<k>/ model folders")
    return folds


def screen_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """What every screen on finished fold models takes: OUT.json, MODEL_ROOT…, --cache DIR."""
    parser.add_argument("out", type=Path, help="result file (.json)")
    parser.add_argument("model_roots", type=Path, nargs="+", help="folders of fold_<k>/ models")
    parser.add_argument("--cache", type=Path, default=Path("checkpoints/head_features"))
    return parser


Head = Callable[[np.ndarray], np.ndarray]  # pooled features (N × D) → tile logits (N × K)


def linear_head(weight: torch.Tensor, bias: torch.Tensor) -> Head:
    return lambda x: (torch.from_numpy(x).float() @ weight.T + bias).numpy()


def fit_mlp(
    features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float, hidden: int = 64, steps: int = 150
) -> Head:
    """A one-hidden-layer head (standardised features → ``hidden`` GELU units → K logits),
    class-balanced cross-entropy with ``l2`` on both weight matrices, full-batch L-BFGS (float32) from
    a fixed seed. Screen-only: the service runs a linear head, so an MLP that wins here needs an export
    change before it can be served."""
    from mtdefect.model.head_fit import balanced_class_weights, standardisation

    mean, std = standardisation(features)
    z = ((features - mean) / std).float()
    weight_per_class = balanced_class_weights(labels, classes)
    generator = torch.Generator().manual_seed(0)
    first = nn.Linear(z.shape[1], hidden)
    second = nn.Linear(hidden, classes)
    with torch.no_grad():
        for layer in (first, second):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.zero_()
    net = nn.Sequential(first, nn.GELU(), second)
    loss_fn = nn.CrossEntropyLoss(weight=weight_per_class)
    optimizer = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(net(z), labels) + l2 * (first.weight.pow(2).sum() + second.weight.pow(2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    net.eval()

    def head(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net((torch.from_numpy(x).float() - mean) / std).double().numpy()

    return head


def fit_variant(features: Mapping[str, np.ndarray], spec: Mapping[str, Any], free: int) -> dict[str, Any]:
    """One variant on one fold: held-out and clean-validation defect probabilities, the L2 chosen and
    the chosen head (pooled features → logits).
    The binary objective is fitted as training fits it (``model.head_fit.fit_head``)."""
    from mtdefect.model.head_fit import fit_head, fit_softmax

    val_free = features["val_labels"] == free
    candidates: dict[float | None, Head]
    if spec["objective"] == "saved":
        weight, bias = torch.from_numpy(features["saved_weight"]), torch.from_numpy(features["saved_bias"])
        candidates = {None: linear_head(weight, bias)}
    else:
        views = [VIEWS.index(v) for v in ["none", *spec["flips"]]]
        train_x = torch.from_numpy(np.concatenate([features["train"][v] for v in views])).float()
        rows = torch.from_numpy(np.tile(features["train_labels"], len(views)))
        classes = len(features["class_names"])
        weights = clean_weights(rows, free, classes, spec.get("clean_weight", 1.0))
        if spec["objective"] != "multinomial" and weights is not None:
            raise ValueError(f"the {spec['objective']} objective is screened without clean-row weights")
        if spec["objective"] == "binary":
            candidates = {
                l2: linear_head(*fit_head(train_x, rows, classes, l2, free, 0.1, 1.0, "binary"))
                for l2 in spec["l2"]
            }
        elif spec["objective"] == "mlp":
            candidates = {
                l2: fit_mlp(train_x, rows, classes, l2, spec.get("hidden", 64)) for l2 in spec["l2"]
            }
        else:
            candidates = {
                l2: linear_head(*fit_softmax(train_x, rows, classes, l2, sample_weight=weights))
                for l2 in spec["l2"]
            }

    def validation(head: Head) -> tuple[float, float]:
        """(the selection metric, class accuracy): ``model.head_fit.refit_tile_head``'s order, ties
        going to the first L2 of the grid as there."""
        logits = head(features["val"])
        scores = defect_probability(logits, free)
        accuracy = float((logits.argmax(1) == features["val_labels"]).mean())
        if spec["select"] == "recall_at_10pct_fa":
            return metrics.recall_at_false_alarm_rate(scores, ~val_free, 0.1)["recall"], accuracy
        auroc = metrics.binary_auroc(scores, ~val_free)
        return (0.0 if math.isnan(auroc) else auroc), accuracy

    chosen = max(candidates, key=lambda l2: validation(candidates[l2]))
    head = candidates[chosen]
    return {
        "l2": chosen,
        "head": head,
        "held_out": defect_probability(head(features["test"]), free),
        "reference": defect_probability(head(features["val"][val_free]), free),
    }


def study(
    cfg: DictConfig,
    model_roots: Sequence[Path],
    cache: Path,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every variant of ``specs`` (default ``variants``) on every fold model of ``model_roots``: its
    pooled decision-scale summary and its paired gain over ``config``."""
    free_class, group_gap, n_resamples, seed = pooling_arguments(cfg)
    specs = specs or variants(cfg.get("head_refit", {}))
    z: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    chosen: dict[str, list[Any]] = {name: [] for name in specs}
    meta: dict[str, list[np.ndarray]] = {"classes": [], "groups": [], "tiles": []}
    for number, root in enumerate(model_roots):
        folds = fold_models(root)
        root_rows: list[dict[str, str]] = []
        for fold in folds:
            manifest = fold_manifest_path(Path(cfg.cv.manifest_dir), fold)
            features = cached_fold_features(
                root / f"fold_{fold}", Path(cfg.paths.data_dir), manifest, group_gap, cache
            )
            free = list(features["class_names"]).index(free_class)
            root_rows += [
                {"image": i, "class": c}
                for i, c in zip(features["test_images"], features["test_classes"], strict=True)
            ]
            meta["classes"].append(features["test_classes"])
            meta["groups"].append(features["test_groups"])
            for name, spec in specs.items():
                fitted = fit_variant(features, spec, free)
                z[name].append(normalised("head", fitted["held_out"], fitted["reference"]))
                chosen[name].append({"model": str(root), "fold": fold, "l2": fitted["l2"]})
            print(f"head-refit screen: {root} fold {fold} done", flush=True)
        # named over all of a root's rows at once, as cv.compare names a run's (tile_ids numbers
        # the tiles within the rows it is given)
        meta["tiles"].append(np.array([f"{t}#{number}" for t in tile_ids(root_rows, group_gap)]))
    classes, groups, tiles = (np.concatenate(meta[k]) for k in ("classes", "groups", "tiles"))
    defective = classes != free_class
    pooled = {name: np.concatenate(parts) for name, parts in z.items()}
    out: dict[str, Any] = {
        "models": [str(r) for r in model_roots],
        "images": int(len(classes)),
        "tiles": int(len(np.unique(tiles))),
        "defect_score": DEFECT_SCORE,
        "variants": {},
    }
    for name, spec in specs.items():
        summary = scorer_summary(
            pooled[name], defective, classes, groups, tiles, free_class, n_resamples, seed
        )
        entry = {"spec": dict(spec), "chosen_l2": chosen[name], "summary": summary}
        if name != BASELINE:
            entry["gain_vs_config"] = paired_gain(
                pooled[BASELINE], pooled[name], defective, groups, tiles, n_resamples, seed
            )
        out["variants"][name] = entry
    return out


def chosen_variants(cfg: DictConfig, only: str) -> dict[str, dict[str, Any]] | None:
    """The specs ``--only`` names (comma-separated) with the baseline; None (all) when empty."""
    if not only:
        return None
    every = variants(cfg.get("head_refit", {}))
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(every))
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(every)}")
    return {name: every[name] for name in (BASELINE, *names)}


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import load_params

    parser = screen_arguments(
        argparse.ArgumentParser(
            prog="python -m mtdefect.screen.head_refit",
            description="Screen head-refit variants on cached features of finished fold models.",
        )
    )
    parser.add_argument("--only", default="", help="comma-separated variants (config always runs)")
    args = parser.parse_args(argv)
    try:
        cfg = load_params()
        result = study(cfg, args.model_roots, args.cache, chosen_variants(cfg, args.only))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"head-refit screen: error: {exc}", file=sys.stderr)
        sys.exit(1)
    write_json_atomic(args.out, result, indent=1)
    for name, entry in result["variants"].items():
        s = entry["summary"]
        line = (
            f"{name:36s} recall@1%FA {s['recall_at_1pct_fa']['value']:.3f}"
            f"  tile {s['tile_recall_at_1pct_fa']['value']:.3f}  AUROC {s['auroc']['value']:.3f}"
        )
        if "gain_vs_config" in entry:
            g = entry["gain_vs_config"]["recall_at_1pct_fa"]
            line += f"  gain {g['value']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
        print(line)


if __name__ == "__main__":
    main()
