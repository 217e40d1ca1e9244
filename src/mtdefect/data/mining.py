"""Hard-negative mining: draw the defect-free tiles the model currently flags more often."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from mtdefect.inference.postprocess import image_score, restore_probability
from mtdefect.inference.preprocess import preprocess


class HardNegativeMining(pl.Callback):
    """Every ``every_n_epochs`` epochs from ``start_epoch`` on, score each defect-free training tile
    with the current weights (the tile score the decision uses: highest mean probability over a
    ``window``² window, whole tile at native size) and set how the defect-free share of the
    following epochs is drawn: ``1 - hard_share`` of it uniformly, ``hard_share`` in proportion to
    the scores.

    Why: 3 in 4 tiles are defect-free, so a uniform draw spends most negative crops on tiles the model
    already gets right, while the few bright tiles it paints confident blobs on (each one a false
    alarm) come up a dozen times in a whole run. The defect share and its class balance are untouched.
    """

    def __init__(
        self, start_epoch: int = 10, every_n_epochs: int = 5, hard_share: float = 0.5, window: int = 5
    ) -> None:
        if not 0.0 <= hard_share <= 1.0:
            raise ValueError(f"hard_share must be in [0, 1], got {hard_share}")
        self.start_epoch = start_epoch
        self.every_n_epochs = max(1, every_n_epochs)
        self.hard_share = hard_share
        self.window = window

    def due(self, epochs_done: int) -> bool:
        return epochs_done >= self.start_epoch and (epochs_done - self.start_epoch) % self.every_n_epochs == 0

    @torch.inference_mode()
    def score_free_tiles(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[int, float]:
        """{training-set index: tile score} for every defect-free training tile."""
        dataset = trainer.datamodule.train_set
        was_training = pl_module.training
        pl_module.eval()
        scores: dict[int, float] = {}
        try:
            with trainer.strategy.precision_plugin.forward_context():
                for index in range(len(dataset)):
                    if dataset.is_defective(index):
                        continue
                    # the service's path: its preprocessing, restoration and score, one network pass
                    image, geometry = preprocess(dataset.native_image(index), dataset.preprocess)
                    logits = pl_module(torch.from_numpy(image).to(pl_module.device))[0].float().cpu().numpy()
                    scores[index] = image_score(restore_probability(logits[0, 0], geometry), self.window)
        finally:
            pl_module.train(was_training)
        return scores

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer.current_epoch + 1) or self.hard_share == 0.0:
            return
        scores = self.score_free_tiles(trainer, pl_module)
        if not scores:
            return
        trainer.datamodule.reweight_free_tiles(scores, self.hard_share)
        values = torch.tensor(list(scores.values()))
        pl_module.log("mining/free_score_mean", values.mean(), sync_dist=False)
        pl_module.log("mining/free_flagged_share", (values >= 0.5).float().mean(), sync_dist=False)
