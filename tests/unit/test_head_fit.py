"""The tile head refitted on whole tiles: the fit on raw features equals the standardised fit, it
separates what the pooled features separate, a refit replaces the head (or, asked to keep it, only
when it validates better), the hardest clean rows can be weighted, and the binary objective serves
through the same linear layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdefect.inference.network import build_net
from mtdefect.inference.settings import PreprocessSettings
from mtdefect.model.head_fit import (
    binary_head,
    fit_head,
    fit_softmax,
    fit_with_hard_negatives,
    hard_negative_weights,
    pooled_features,
    refit_tile_head,
)

NET = {
    "arch": "Unet",
    "encoder": "resnet10t",
    "in_channels": 1,
    "decoder_channels": [16, 16, 8, 8, 8],
    "tile_classes": 2,
}


def tiles(n: int, bright: bool, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gray = rng.normal(100, 5, (64, 96)).clip(0, 255)
        if bright:
            y, x = rng.integers(8, 50), rng.integers(8, 80)
            gray[y : y + 8, x : x + 8] = 250
        out.append(gray.astype(np.uint8))
    return out


def untrained_net_and_tiles() -> tuple[
    torch.nn.Module, PreprocessSettings, list[np.ndarray], list[np.ndarray]
]:
    """A seeded untrained net, its preprocessing, 12 + 12 training and 6 + 6 validation tiles (plain, then
    with a bright square)."""
    torch.manual_seed(0)
    net = build_net(**NET).eval()
    train = tiles(12, False, 1) + tiles(12, True, 2)
    val = tiles(6, False, 3) + tiles(6, True, 4)
    return net, PreprocessSettings(per_image=True), train, val


def test_softmax_fit_separates_separable_features_and_folds_the_standardisation() -> None:
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(0, 1, (80, 5)) * [1, 10, 100, 1, 1] + [0, 5, -50, 0, 0], dtype=torch.float32)
    y = torch.tensor((x[:, 2] > -50).long())  # decided by the feature with the largest scale
    weight, bias = fit_softmax(x, y, classes=2, l2=1e-4)
    predicted = (x @ weight.T + bias).argmax(1)
    assert (predicted == y).float().mean() >= 0.95  # on raw (unstandardised) features


def test_refit_learns_what_the_pooled_features_show_and_never_makes_the_head_worse() -> None:
    net, settings, train, val = untrained_net_and_tiles()
    labels_train, labels_val = [0] * 12 + [1] * 12, [0] * 6 + [1] * 6
    features = pooled_features(net, train, settings, flips=["horizontal"])
    assert features.shape == (48, net.head.linear.in_features)
    report = refit_tile_head(
        net,
        train,
        labels_train,
        val,
        labels_val,
        free_index=0,
        settings=settings,
        l2_grid=(1e-3,),
        flips=["horizontal"],
        keep_current_head=True,
    )
    trained, refit = report["candidates"]
    assert refit["val_auroc"] >= 0.9 and report["chosen"]["val_auroc"] >= trained["val_auroc"]
    with torch.no_grad():
        probs = torch.softmax(net(torch.zeros(1, 1, 64, 96))[1], 1)
    assert probs.shape == (1, 2)
    # with keep_current_head, a refit that validates worse than the current head leaves it as it was
    before = net.head.linear.weight.detach().clone()
    shuffled = [labels_train[i] for i in np.random.default_rng(5).permutation(len(labels_train))]
    worse = refit_tile_head(
        net, train, shuffled, val, labels_val, 0, settings, l2_grid=(1e-3,), flips=(), keep_current_head=True
    )
    current, refit = worse["candidates"]
    assert refit["val_auroc"] < current["val_auroc"]  # labels shuffled: the refit learns nothing
    assert worse["chosen"]["l2"] is None and torch.equal(net.head.linear.weight, before)
    # the default: the best refit replaces the head even where the current head validates better
    forced = refit_tile_head(net, train, shuffled, val, labels_val, 0, settings, l2_grid=(1e-3,), flips=())
    assert forced["chosen"]["l2"] == 1e-3 and not torch.equal(net.head.linear.weight, before)


def test_hard_negative_weights_pick_the_most_defect_like_clean_rows_and_keep_the_balance() -> None:
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8, 0.0, 0.4, 0.5, 0.6, 0.7, 0.95, 0.2])
    weights = hard_negative_weights(scores, labels, free_index=0, fraction=0.2, weight=4.0)
    clean = weights[:10]
    assert torch.allclose(clean.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert set(torch.nonzero(clean == clean.max()).flatten().tolist()) == {1, 4}  # scores 0.9, 0.8
    assert torch.equal(weights[10:], torch.ones(2, dtype=torch.float64))  # defective rows untouched


def test_weighting_the_hard_clean_rows_lowers_their_scores_and_weight_one_is_the_plain_fit() -> None:
    rng = np.random.default_rng(3)
    clean = rng.normal(0, 1, (60, 4))
    clean[:6, 0] += 2.5  # a few clean rows that look half defective (scratches, stains)
    defective = rng.normal(0, 1, (30, 4)) + [3.0, 0, 0, 0]
    x = torch.tensor(np.concatenate([clean, defective]), dtype=torch.float32)
    y = torch.tensor([0] * 60 + [1] * 30)
    plain = fit_softmax(x, y, classes=2, l2=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(fit_with_hard_negatives(x, y, 2, 1e-3, 0, 0.1, 1.0), plain))
    weighted = fit_with_hard_negatives(x, y, 2, 1e-3, free_index=0, fraction=0.1, weight=8.0)

    def defect_score(fit: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.softmax(x @ fit[0].T + fit[1], dim=1)[:, 1]

    hardest = torch.argsort(defect_score(plain)[:60], descending=True)[:6]
    assert defect_score(weighted)[hardest].mean() < defect_score(plain)[hardest].mean()


def four_classes(seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean (index 2) against three defect kinds: dimension 0 says clean or not, 1 and 2 the kind."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 2, 2, 3], size=300)
    x = rng.normal(0, 1, (300, 6))
    x[:, 0] += np.where(y == 2, -1.5, 1.5)
    x[:, 1] += 2.0 * (y == 0) - 2.0 * (y == 1)
    x[:, 2] += 2.5 * (y == 3)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_binary_head_serves_the_binary_probability_and_the_multinomial_kind_in_one_layer() -> None:
    x, y = four_classes()
    free = 2
    binary = fit_softmax(x, (y != free).long(), classes=2, l2=1e-3)
    multinomial = fit_softmax(x, y, classes=4, l2=1e-3)
    binary_p = torch.softmax(x @ binary[0].T + binary[1], dim=1)[:, 1]

    def served(layer: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.softmax(x @ layer[0].T + layer[1], dim=1)

    exact = served(binary_head(binary, multinomial, free, class_scale=0.0))
    assert torch.allclose(1 - exact[:, free], binary_p, atol=1e-5)  # the decision is the binary fit's
    default = served(binary_head(binary, multinomial, free))
    assert torch.allclose(1 - default[:, free], binary_p, atol=2e-3)
    defects = [0, 1, 3]
    kind = torch.tensor(defects)[(x @ multinomial[0].T + multinomial[1])[:, defects].argmax(1)]
    assert torch.equal(
        torch.tensor(defects)[default[:, defects].argmax(1)], kind
    )  # the kind is the six-way fit's
    # fit_head: the multinomial objective is the plain fit; the binary one composes the two fits
    assert all(torch.equal(a, b) for a, b in zip(fit_head(x, y, 4, 1e-3, free, 0.1, 1.0), multinomial))
    composed = fit_head(x, y, 4, 1e-3, free, 0.1, 1.0, "binary")
    assert all(torch.allclose(a, b) for a, b in zip(composed, binary_head(binary, multinomial, free)))
    with pytest.raises(ValueError, match="objective"):
        fit_head(x, y, 4, 1e-3, free, 0.1, 1.0, "ordinal")


def test_refit_under_the_binary_objective_names_it_and_separates_clean_from_defective() -> None:
    net, settings, train, val = untrained_net_and_tiles()
    report = refit_tile_head(
        net,
        train,
        [0] * 12 + [1] * 12,
        val,
        [0] * 6 + [1] * 6,
        0,
        settings,
        l2_grid=(1e-3,),
        objective="binary",
    )
    assert report["objective"] == "binary" and "binary objective" in report["chosen"]["source"]
    assert report["chosen"]["val_auroc"] >= 0.9
    assert torch.all(net.head.linear.weight[0] == 0) and net.head.linear.bias[0] == 0  # free logit 0
