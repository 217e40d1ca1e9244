"""Refit the tile head's linear layer on whole training tiles, after the network is trained.

Why: the head is trained with the segmenter on crops (160 px, most of them centred on a defect), but
answers for whole tiles of 100-630 px. Pooled over a whole tile, the features differ from a crop's
(a mean over a larger area dilutes a small defect). Once the encoder is fixed, the head is a linear
softmax regression on pooled features, so it can be fitted exactly on the distribution it will see:
every whole training tile through the service's preprocessing (native size unless the model
scales), with flipped copies. The L2 strength is chosen on the validation split (AUROC of
1 − P(free), then class accuracy). The head trained with the segmenter is kept instead only with
``keep_current_head`` (off by default): on validation it is not a fair contestant — its checkpoint
was picked on the same validation tiles — and under cross-validation keeping it where it validated
better cost recall at ≤ 1 % false alarms (docs/MODEL_QUALITY.md, session 16).

Hard clean negatives (``hard_negative_weight`` > 1): the reject arm's budget of ≤ 1 % false alarms is
spent on a few clean tiles with scratches and stains, which a class-balanced fit treats like any other
clean tile. With the option on, each L2 strength is fitted twice: the clean training rows the first
fit scores most defect-like (the top ``hard_negative_fraction`` by 1 − P(free)) then count
``hard_negative_weight`` times, the class balance kept.

A binary objective (``objective: binary``): the reject decision asks only clean or not, and a
six-way fit spends its capacity on telling the defect kinds apart. With the option on, each L2
strength fits clean against every defect kind pooled (``fit_softmax`` on two classes, the two sides
balanced) and, for the class shown, the six-way fit as before; ``binary_head`` writes both into the
one linear layer the service already runs, so served scores need no new code: 1 − P(free) is the
binary fit's probability (to within ``BINARY_CLASS_SCALE``) and the top defect class is the six-way
fit's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtdefect.data.split import Record, read_manifest
from mtdefect.inference.network import SegmenterWithTileHead
from mtdefect.inference.postprocess import defect_probability
from mtdefect.inference.preprocess import preprocess
from mtdefect.inference.settings import PreprocessSettings
from mtdefect.metrics import binary_auroc
from mtdefect.scoring import read_image

FLIPS = {"horizontal": (3,), "vertical": (2,)}
OBJECTIVES = ("multinomial", "binary")
# how much of the six-way fit's centred defect logits the binary head carries: enough to order the
# defect kinds, small enough (|logit| ≲ 30 → ≤ 0.03) to leave 1 − P(free) the binary fit's
BINARY_CLASS_SCALE = 1e-3


@torch.inference_mode()
def pooled_features(
    net: SegmenterWithTileHead,
    images: Sequence[np.ndarray],
    settings: PreprocessSettings,
    flips: Sequence[str] = (),
) -> torch.Tensor:
    """(len(images) × (1 + len(flips)), D) pooled head inputs: each image, then its flipped copies."""
    net.eval()
    rows = []
    for gray in images:
        batch, _ = preprocess(gray, settings)
        x = torch.from_numpy(batch)
        views = torch.cat([x] + [torch.flip(x, FLIPS[f]) for f in flips])
        rows.append(net.head.pool(net.segmenter.encoder(views)))
    per_image = torch.stack(rows)  # (N, views, D)
    return per_image.transpose(0, 1).reshape(-1, per_image.shape[-1])  # views-major: labels repeat


def balanced_class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """One weight per class, n / (K · n_class), so every class present weighs the same in total
    (0 for a class with no rows)."""
    counts = torch.bincount(labels, minlength=classes).float()
    return torch.where(counts > 0, len(labels) / (classes * counts.clamp_min(1)), torch.zeros(()))


def standardisation(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per feature, the std floored to stay finite: what a head is fitted on."""
    return features.mean(0), features.std(0).clamp_min(1e-6)


def fit_softmax(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    l2: float,
    steps: int = 200,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression (full-batch L-BFGS) on standardised features,
    returned as (weight, bias) of a linear layer on the *raw* features. ``sample_weight`` (one per
    row) multiplies each row's class-balanced weight."""
    mean, std = standardisation(features)
    z = (features - mean) / std
    weight_per_class = balanced_class_weights(labels, classes)
    linear = nn.Linear(z.shape[1], classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    z = z.double()
    if sample_weight is None:
        loss_fn = nn.CrossEntropyLoss(weight=weight_per_class.double())
    else:
        row_weight = weight_per_class.double()[labels] * sample_weight.double()

        def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            per_row = nn.functional.cross_entropy(logits, target, reduction="none")
            return (row_weight * per_row).sum() / row_weight.sum()

    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(linear(z), labels) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight = (linear.weight.detach() / std.double()).float()
    bias = (linear.bias.detach() - (linear.weight.detach() * (mean / std).double()).sum(1)).float()
    return weight, bias


def hard_negative_weights(
    defect_scores: torch.Tensor, labels: torch.Tensor, free_index: int, fraction: float, weight: float
) -> torch.Tensor:
    """One weight per row: the top ``fraction`` of clean rows by ``defect_scores`` count ``weight``,
    every other row 1; the clean rows' weights are then rescaled to average 1 (class balance kept)."""
    out = torch.ones(len(labels), dtype=torch.float64)
    clean = torch.nonzero(labels == free_index).flatten()
    hard = max(1, round(fraction * len(clean))) if len(clean) else 0
    if hard:
        top = clean[torch.argsort(defect_scores[clean], descending=True)[:hard]]
        out[top] = float(weight)
        out[clean] /= out[clean].mean()
    return out


def fit_with_hard_negatives(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    l2: float,
    free_index: int,
    fraction: float,
    weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_softmax``, then (``weight`` ≠ 1) fitted again with the hardest clean rows weighted."""
    fitted = fit_softmax(features, labels, classes, l2)
    if weight == 1.0:
        return fitted
    defect = torch.from_numpy(defect_probability((features @ fitted[0].T + fitted[1]).numpy(), free_index))
    rows = hard_negative_weights(defect, labels, free_index, fraction, weight)
    return fit_softmax(features, labels, classes, l2, sample_weight=rows)


def binary_head(
    binary: tuple[torch.Tensor, torch.Tensor],
    multinomial: tuple[torch.Tensor, torch.Tensor],
    free_index: int,
    class_scale: float = BINARY_CLASS_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One C-way linear layer from a clean-vs-defect fit (``binary``: rows 0 clean, 1 defect) and a
    C-way fit (``multinomial``): the free logit is 0 and each defect logit is the binary logit
    − log(C − 1) plus ``class_scale`` × the C-way fit's defect logit centred over the defect rows, so
    1 − P(free) = σ(binary logit) exactly when ``class_scale`` is 0, and the defect kinds rank as the
    C-way fit ranks them."""
    (wb, bb), (wm, bm) = binary, multinomial
    classes = wm.shape[0]
    defects = [k for k in range(classes) if k != free_index]
    w_logit, b_logit = wb[1] - wb[0], bb[1] - bb[0]
    wm_c = wm[defects] - wm[defects].mean(0, keepdim=True)
    bm_c = bm[defects] - bm[defects].mean()
    weight = torch.zeros_like(wm)
    bias = torch.zeros_like(bm)
    weight[defects] = w_logit + class_scale * wm_c
    bias[defects] = b_logit - math.log(len(defects)) + class_scale * bm_c
    return weight, bias


def fit_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    l2: float,
    free_index: int,
    fraction: float,
    weight: float,
    objective: str = "multinomial",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The C-way head fitted under ``objective`` (``OBJECTIVES``): ``fit_with_hard_negatives`` as it
    is, or ``binary_head`` of a clean-vs-defect fit (hard clean negatives weighted there, where the
    decision is) and the C-way fit."""
    if objective not in OBJECTIVES:
        raise ValueError(f"head_refit.objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    multinomial = fit_with_hard_negatives(features, labels, classes, l2, free_index, fraction, weight)
    if objective == "multinomial":
        return multinomial
    defect = (labels != free_index).long()
    binary = fit_with_hard_negatives(features, defect, 2, l2, 0, fraction, weight)
    return binary_head(binary, multinomial, free_index)


def refit_tile_head(
    net: SegmenterWithTileHead,
    train_images: Sequence[np.ndarray],
    train_labels: Sequence[int],
    val_images: Sequence[np.ndarray],
    val_labels: Sequence[int],
    free_index: int,
    settings: PreprocessSettings,
    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2),
    flips: Sequence[str] = ("horizontal",),
    hard_negative_fraction: float = 0.1,
    hard_negative_weight: float = 1.0,
    current_head: str = "trained with the segmenter",
    keep_current_head: bool = False,
    objective: str = "multinomial",
) -> dict[str, Any]:
    """Replace ``net.head.linear`` by the best refit (validation AUROC of 1 − P(free), then class
    accuracy); keeps the current head (``current_head`` names where it came from) when it is better
    on validation, unless ``keep_current_head`` is false (the best refit replaces it regardless:
    how a refit lever is measured on its own). Returns a report."""
    classes = net.head.linear.out_features
    train_x = pooled_features(net, train_images, settings, flips)
    train_y = torch.tensor(list(train_labels) * (1 + len(flips)), dtype=torch.long)
    val_x = pooled_features(net, val_images, settings)
    val_y = torch.tensor(list(val_labels), dtype=torch.long)
    defective = (val_y != free_index).numpy()

    def score(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, float]:
        logits = val_x @ weight.T + bias
        auroc = binary_auroc(defect_probability(logits.numpy(), free_index), defective)
        accuracy = float((logits.argmax(1) == val_y).float().mean())
        return {"val_auroc": 0.0 if math.isnan(auroc) else auroc, "val_accuracy": accuracy}

    trained = (net.head.linear.weight.detach().clone(), net.head.linear.bias.detach().clone())
    rows = [{"l2": None, "source": current_head, **score(*trained)}]
    source = "refit on whole training tiles"
    if objective != "multinomial":
        source += f", {objective} objective"
    if hard_negative_weight != 1.0:
        source += f", the hardest {hard_negative_fraction:.0%} of clean rows ×{hard_negative_weight:g}"
    fits = {}
    for l2 in l2_grid:
        fits[l2] = fit_head(
            train_x,
            train_y,
            classes,
            float(l2),
            free_index,
            hard_negative_fraction,
            hard_negative_weight,
            objective,
        )
        rows.append({"l2": float(l2), "source": source, **score(*fits[l2])})
    eligible = rows if keep_current_head or not fits else rows[1:]
    best = max(eligible, key=lambda r: (r["val_auroc"], r["val_accuracy"], r["l2"] is None))
    if best["l2"] is not None:
        weight, bias = fits[best["l2"]]
        with torch.no_grad():
            net.head.linear.weight.copy_(weight)
            net.head.linear.bias.copy_(bias)
    report = {
        "candidates": rows,
        "chosen": best,
        "train_tiles": len(train_images),
        "flips": list(flips),
        "hard_negatives": {"fraction": hard_negative_fraction, "weight": hard_negative_weight},
        "objective": objective,
    }
    print(
        f"head refit: {best['source']} (l2 {best['l2']}) val AUROC {best['val_auroc']:.3f} "
        f"accuracy {best['val_accuracy']:.3f}; {current_head}: AUROC {rows[0]['val_auroc']:.3f}"
    )
    return report


def refit_head_from_manifest(
    net: SegmenterWithTileHead,
    data_dir: str | Path,
    manifest: str | Path,
    class_names: Sequence[str],
    free_index: int,
    settings: PreprocessSettings,
    options: Mapping[str, Any],
    current_head: str = "trained with the segmenter",
) -> dict[str, Any]:
    """``refit_tile_head`` on a manifest's train rows, L2 chosen on its val rows, every tile read as
    the service reads an upload; ``options`` are the config's ``head_refit`` group."""
    train_records = read_manifest(manifest, "train")
    val_records = read_manifest(manifest, "val")
    index = {name: i for i, name in enumerate(class_names)}

    def images(records: Sequence[Record]) -> list[np.ndarray]:
        return [read_image(data_dir, r.image) for r in records]

    return refit_tile_head(
        net,
        images(train_records),
        [index[r.class_name] for r in train_records],
        images(val_records),
        [index[r.class_name] for r in val_records],
        free_index,
        settings,
        l2_grid=options.get("l2", (1e-4,)),
        flips=options.get("flips", ()),
        hard_negative_fraction=float(options.get("hard_negative_fraction", 0.1)),
        hard_negative_weight=float(options.get("hard_negative_weight", 1.0)),
        current_head=current_head,
        keep_current_head=bool(options.get("keep_current_head", False)),
        objective=str(options.get("objective", "multinomial")),
    )
