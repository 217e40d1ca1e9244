"""The head-refit screen's variants on synthetic pooled features: the clean-row weights undo or tilt
the class balance as they say, and each variant's fit and L2 choice follow its spec. (Its
``config`` variant against the service's path on real fold models: ``test_cv.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdefect.metrics import binary_auroc
from mtdefect.screen.head_refit import VIEWS, clean_weights, fit_variant, variants

FREE = 2  # index of the clean class among three


def features(seed: int = 0, n: int = 200, dim: int = 5) -> dict[str, np.ndarray]:
    """Three classes; dimension 0 separates clean from defective with overlap, dimension 1 the two
    defect classes; clean rows are the majority, as in the data."""
    rng = np.random.default_rng(seed)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice([0, 1, FREE, FREE], size=count)
        x = rng.normal(size=(count, dim))
        x[:, 0] += np.where(labels == FREE, -1.0, 1.0)
        x[:, 1] += np.where(labels == 0, 1.5, -1.5) * (labels != FREE)
        return x.astype(np.float32), labels

    train, train_labels = draw(n)
    flipped = np.stack([train + rng.normal(scale=0.05, size=train.shape).astype(np.float32) for _ in VIEWS])
    val, val_labels = draw(n)
    test, test_labels = draw(n)
    return {
        "train": flipped,
        "train_labels": train_labels,
        "val": val,
        "val_labels": val_labels,
        "test": test,
        "test_labels": test_labels,
        "class_names": np.array(["a", "b", "free"]),
        "saved_weight": np.zeros((3, dim), np.float32),
        "saved_bias": np.array([0.0, 0.0, 1.0], np.float32),
    }


def test_clean_weights_tilt_or_undo_the_class_balance() -> None:
    labels = torch.tensor([0, 1, 2, 2, 2, 2])
    assert clean_weights(labels, FREE, 3, 1.0) is None
    assert clean_weights(labels, FREE, 3, 3.0).tolist() == [1, 1, 3, 3, 3, 3]
    unbalanced = clean_weights(labels, FREE, 3, "unbalanced")
    balance = len(labels) / (3 * torch.bincount(labels).double())  # fit_softmax's class weights
    assert (balance[labels] * unbalanced).tolist() == pytest.approx([1.0] * 6)  # every row the same


def test_each_variant_fits_as_its_spec_says() -> None:
    data = features()
    specs = variants({"l2": [1e-4, 1e-2], "flips": ["horizontal"]})
    # mlp_256 runs mlp_64's code with a wider layer: left to the MLP test below, for time
    fits = {name: fit_variant(data, spec, FREE) for name, spec in specs.items() if name != "mlp_256"}
    for name, fit in fits.items():
        assert fit["held_out"].shape == (200,) and fit["reference"].shape == (
            (data["val_labels"] == FREE).sum(),
        )
        assert np.all((fit["held_out"] >= 0) & (fit["held_out"] <= 1)), name
        assert fit["l2"] in ([None] if name == "saved_head" else specs[name]["l2"]), name
    # the saved head: a bias toward clean and no weights, so every tile scores the same
    assert np.ptp(fits["saved_head"]["held_out"]) == pytest.approx(0.0)
    assert fits["l2_fixed_10"]["l2"] == 10.0
    # every fit learns the clean / defective direction on tiles it never saw
    defective = data["test_labels"] != FREE
    for name in ("config", "binary", "clean_weight_10", "unbalanced", "flips_horizontal_vertical", "mlp_64"):
        assert binary_auroc(fits[name]["held_out"], defective) > 0.8, name
    # more weight on the clean rows lowers what clean validation tiles score
    assert fits["clean_weight_10"]["reference"].mean() < fits["config"]["reference"].mean()


def test_the_mlp_head_finds_a_boundary_a_linear_head_cannot() -> None:
    """Defects on both sides of the clean tiles along one feature: no linear head ranks them, the
    one-hidden-layer head does."""
    rng = np.random.default_rng(1)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice([0, 1, FREE, FREE], size=count)
        x = rng.normal(scale=0.5, size=(count, 4))
        x[:, 0] += np.select([labels == 0, labels == 1], [3.0, -3.0], 0.0)
        return x.astype(np.float32), labels

    (train, train_labels), (val, val_labels), (test, test_labels) = draw(300), draw(300), draw(300)
    data = {
        "train": np.stack([train] * len(VIEWS)),
        "train_labels": train_labels,
        "val": val,
        "val_labels": val_labels,
        "test": test,
        "class_names": np.array(["a", "b", "free"]),
    }
    specs = variants({"l2": [1e-2], "flips": []})
    defective = test_labels != FREE
    for name in ("mlp_64", "mlp_256"):
        mlp = fit_variant(data, {**specs[name], "l2": [1e-2]}, FREE)
        assert binary_auroc(mlp["held_out"], defective) > 0.95, name
    # a two-defect-class softmax can still separate them (each class its own side): the binary
    # (clean against all defects) linear fit cannot
    binary = fit_variant(data, specs["binary"], FREE)
    assert binary_auroc(binary["held_out"], defective) < 0.75


def test_only_picks_named_variants_with_the_baseline_and_refuses_unknown_names() -> None:
    from omegaconf import OmegaConf

    from mtdefect.screen.head_refit import BASELINE, chosen_variants

    cfg = OmegaConf.create({"head_refit": {"l2": [1e-4], "flips": ["horizontal"]}})
    assert chosen_variants(cfg, "") is None
    picked = chosen_variants(cfg, "binary, no_flips")
    assert list(picked) == [BASELINE, "binary", "no_flips"]
    assert picked["binary"]["objective"] == "binary" and picked["no_flips"]["flips"] == []
    with pytest.raises(ValueError, match="unknown variant"):
        chosen_variants(cfg, "binary,typo")
