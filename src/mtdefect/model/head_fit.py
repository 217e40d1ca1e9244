"""Refit the tile head's linear layer on whole training tiles, after the network is trained.

Why: the head is trained with the segmenter on crops (160 px, most of them centred on a defect), but
answers for whole tiles of 100-630 px. Pooled over a whole tile, the features differ from a crop's
(a mean over a larger area dilutes a small defect). Once the encoder is fixed, the head is a linear
softmax regression on pooled features, so it can be fitted exactly on the distribution it will see:
every whole training tile through the service's preprocessing (native size unless the model
scales), with flipped copies. The L2 strength is chosen on the validation split (AUROC of
1 − P(free), then class accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mtdefect.inference.network import SegmenterWithTileHead
from mtdefect.inference.preprocess import preprocess
from mtdefect.inference.settings import PreprocessSettings
from mtdefect.metrics import binary_auroc

FLIPS = {"horizontal": (3,), "vertical": (2,)}


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


def fit_softmax(
    features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression (full-batch L-BFGS) on standardised features,
    returned as (weight, bias) of a linear layer on the *raw* features."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    counts = torch.bincount(labels, minlength=classes).float()
    weight_per_class = torch.where(counts > 0, len(labels) / (classes * counts.clamp_min(1)), torch.zeros(()))
    linear = nn.Linear(z.shape[1], classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    z = z.double()
    loss_fn = nn.CrossEntropyLoss(weight=weight_per_class.double())
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
) -> dict[str, Any]:
    """Replace ``net.head.linear`` by the best refit (validation AUROC of 1 − P(free), then class
    accuracy); keeps the trained head when it is better on validation. Returns a report."""
    classes = net.head.linear.out_features
    train_x = pooled_features(net, train_images, settings, flips)
    train_y = torch.tensor(list(train_labels) * (1 + len(flips)), dtype=torch.long)
    val_x = pooled_features(net, val_images, settings)
    val_y = torch.tensor(list(val_labels), dtype=torch.long)
    defective = (val_y != free_index).numpy()

    def score(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, float]:
        probs = torch.softmax(val_x @ weight.T + bias, dim=1)
        auroc = binary_auroc(1 - probs[:, free_index].numpy(), defective)
        accuracy = float((probs.argmax(1) == val_y).float().mean())
        return {"val_auroc": 0.0 if math.isnan(auroc) else auroc, "val_accuracy": accuracy}

    trained = (net.head.linear.weight.detach().clone(), net.head.linear.bias.detach().clone())
    rows = [{"l2": None, "source": "trained with the segmenter", **score(*trained)}]
    fits = {}
    for l2 in l2_grid:
        fits[l2] = fit_softmax(train_x, train_y, classes, float(l2))
        rows.append({"l2": float(l2), "source": "refit on whole training tiles", **score(*fits[l2])})
    best = max(rows, key=lambda r: (r["val_auroc"], r["val_accuracy"], r["l2"] is None))
    if best["l2"] is not None:
        weight, bias = fits[best["l2"]]
        with torch.no_grad():
            net.head.linear.weight.copy_(weight)
            net.head.linear.bias.copy_(bias)
    report = {"candidates": rows, "chosen": best, "train_tiles": len(train_images), "flips": list(flips)}
    print(
        f"head refit: {best['source']} (l2 {best['l2']}) val AUROC {best['val_auroc']:.3f} "
        f"accuracy {best['val_accuracy']:.3f}; trained head: AUROC {rows[0]['val_auroc']:.3f}"
    )
    return report
