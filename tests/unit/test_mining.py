"""Hard-negative mining: scores of defect-free training tiles steer the next epochs' draw."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from mtdefect.data.datamodule import TileDataModule
from mtdefect.data.mining import HardNegativeMining
from mtdefect.inference import ModelSettings, Predictor
from mtdefect.inference.predictor import torch_runner
from mtdefect.inference.preprocess import preprocess
from mtdefect.model.module import SegmentationModule

TINY_NET = dict(encoder="resnet10t", decoder_channels=[32, 16, 16, 8, 8])


def _datamodule(synthetic_dataset: tuple[Path, Path], **preprocess) -> TileDataModule:
    dataset_dir, manifest = synthetic_dataset
    dm = TileDataModule(
        str(dataset_dir),
        str(manifest),
        {"stride": 32, **preprocess},
        crop_size=32,
        batch_size=4,
        defect_fraction=0.6,
        class_balance=True,
        samples_per_epoch=16,
    )
    dm.setup("fit")
    return dm


def _shares(dm: TileDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    weights = dm._train_sampler.weights
    free = torch.tensor([not dm.train_set.is_defective(i) for i in range(len(dm.train_set))])
    return weights / weights.sum(), free


def test_reweighting_moves_the_free_share_to_high_scores_only(synthetic_dataset: tuple[Path, Path]) -> None:
    dm = _datamodule(synthetic_dataset)
    dm.train_dataloader()
    before, free = _shares(dm)
    before = before.clone()
    free_index = torch.nonzero(free).flatten().tolist()
    hot, cold = free_index[0], free_index[1:]
    dm.reweight_free_tiles({i: (0.9 if i == hot else 0.0) for i in free_index}, hard_share=0.5)
    after, _ = _shares(dm)
    assert after[free].sum().item() == pytest.approx(0.4)  # the free share itself is unchanged
    assert torch.allclose(after[~free], before[~free])  # so is every defective tile's (class balance kept)
    uniform = 0.4 / len(free_index)
    assert after[hot].item() == pytest.approx(0.5 * uniform + 0.5 * 0.4)
    assert all(after[i].item() == pytest.approx(0.5 * uniform) for i in cold)


def test_all_zero_scores_keep_the_draw_uniform(synthetic_dataset: tuple[Path, Path]) -> None:
    dm = _datamodule(synthetic_dataset)
    dm.train_dataloader()
    before, free = _shares(dm)
    before = before.clone()
    dm.reweight_free_tiles({i: 0.0 for i in torch.nonzero(free).flatten().tolist()}, hard_share=1.0)
    assert torch.allclose(_shares(dm)[0], before)


def test_due_epochs() -> None:
    mining = HardNegativeMining(start_epoch=4, every_n_epochs=3)
    assert [e for e in range(1, 14) if mining.due(e)] == [4, 7, 10, 13]
    with pytest.raises(ValueError, match="hard_share"):
        HardNegativeMining(hard_share=1.5)


def test_mining_inside_a_fit(synthetic_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """The callback scores every defect-free training tile (and only those), with the model left in
    training mode, and the following epoch draws from the reweighted sampler."""
    dm = _datamodule(synthetic_dataset)
    module = SegmentationModule(**TINY_NET)
    mining = HardNegativeMining(start_epoch=1, every_n_epochs=1, hard_share=1.0)
    seen: list[dict[int, float]] = []
    original = mining.score_free_tiles

    def recording(trainer, pl_module):
        scores = original(trainer, pl_module)
        assert pl_module.training
        seen.append(scores)
        return scores

    mining.score_free_tiles = recording
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[mining],
    )
    trainer.fit(module, datamodule=dm)
    assert len(seen) == 2
    free = {i for i in range(len(dm.train_set)) if not dm.train_set.is_defective(i)}
    assert set(seen[-1]) == free
    assert all(0.0 <= s <= 1.0 for s in seen[-1].values())
    shares, free_mask = _shares(dm)
    expected = torch.tensor([seen[-1][i] for i in sorted(free)], dtype=shares.dtype)
    assert torch.allclose(shares[free_mask], 0.4 * expected / expected.sum())
    assert "mining/free_score_mean" in trainer.callback_metrics


def test_callbacks_mining_config_adds_the_callback_to_the_defaults() -> None:
    from hydra import compose, initialize_config_dir

    from mtdefect.train import instantiate_all

    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(conf, version_base="1.3"):
        cfg = compose("config", overrides=["callbacks=mining"])
    callbacks = instantiate_all(cfg.callbacks)
    mining = [c for c in callbacks if isinstance(c, HardNegativeMining)]
    assert len(mining) == 1 and mining[0].hard_share == 0.5
    assert any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)  # the defaults stay


def test_mining_scores_tiles_as_the_service_would_under_a_scale_factor(
    synthetic_dataset: tuple[Path, Path],
) -> None:
    """The training set holds tiles already scaled; mining must start from the stored tile, or a
    factor of 1.5 would be applied twice (2.25x) and the scores would not be the service's."""
    dm = _datamodule(synthetic_dataset, scale=1.5)
    module = SegmentationModule(**TINY_NET).eval()
    shapes: list[tuple[int, ...]] = []
    module.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    trainer = SimpleNamespace(
        datamodule=dm, strategy=SimpleNamespace(precision_plugin=SimpleNamespace(forward_context=nullcontext))
    )
    scores = HardNegativeMining(window=1).score_free_tiles(trainer, module)
    dataset = dm.train_set
    predictor = Predictor(ModelSettings(net={}, preprocess=dataset.preprocess), torch_runner(module), "torch")
    for n, index in enumerate(sorted(scores)):
        native = dataset.native_image(index)
        _, geometry = preprocess(native, dataset.preprocess)
        assert shapes[n][2:] == geometry.padded  # scaled once: 1.5x the stored tile, padded
        assert dataset.images[index].shape == geometry.scaled
        probability, _ = predictor.infer(native)
        assert scores[index] == pytest.approx(float(probability.max()), abs=1e-5)
