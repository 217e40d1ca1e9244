"""train(cfg): shared by the DVC stage (cfg from params.yaml) and the Hydra entry point (multirun).

python -m mtdefect.train                                   # one run, config from conf/
python -m mtdefect.train -m model.encoder=resnet18,efficientnet_b0   # a sweep
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from mtdefect.calibrate import calibrate_on_validation
from mtdefect.data.split import read_manifest
from mtdefect.fileio import write_json_atomic
from mtdefect.inference import ModelSettings, PostprocessSettings, Predictor, PreprocessSettings
from mtdefect.inference.predictor import torch_runner
from mtdefect.model.bundle import write_model_dir
from mtdefect.model.head_fit import refit_head_from_manifest

FINGERPRINT_FILE = "fingerprint.json"


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that shapes training; a checkpoint only resumes a run with the same hash."""
    keys = ("seed", "model", "trainer", "data")
    resolved = OmegaConf.to_container(cfg, resolve=True)  # resolve first: data.* interpolates paths.*
    payload = {k: resolved[k] for k in keys if k in resolved}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def resume_checkpoint(checkpoint_dir: Path, fingerprint: str) -> str | None:
    """``last.ckpt`` of an interrupted run with the same config, else None (and a clean folder)."""
    marker = checkpoint_dir / FINGERPRINT_FILE
    last = checkpoint_dir / "last.ckpt"
    if last.exists() and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        print(f"resuming interrupted training from {last}")
        return str(last)
    if rank_zero_only.rank == 0:  # DDP under torchrun/SLURM: every rank gets here; one cleans up
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return None


def load_best_weights(module: pl.LightningModule, trainer: pl.Trainer) -> str | None:
    """Load the best checkpoint's weights (``weights_only=True``: no pickled objects accepted)."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback else ""
    if not path or not Path(path).exists():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    return path


def as_dict(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node or {})


def instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, keep the best checkpoint by validation Dice, calibrate the postprocessing on validation,
    and write the model folder (weights + settings). Returns the validation metrics (for sweeps)."""
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic", False)), warn_only=True)
    paths = cfg.paths
    checkpoint_dir = Path(paths.checkpoint_dir)
    ckpt_path = resume_checkpoint(checkpoint_dir, config_fingerprint(cfg))

    datamodule = instantiate(cfg.data.module, _convert_="all")
    module = instantiate(cfg.model, _convert_="all")
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # a learning-rate monitor needs somewhere to write
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer_cfg = cfg.trainer
    if trainer_cfg.get("sync_batchnorm") and trainer_cfg.get("accelerator") == "cpu":
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"sync_batchnorm": False})  # SyncBatchNorm is CUDA-only
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = load_best_weights(module, trainer)
    fit_seconds = time.perf_counter() - started

    if not trainer.is_global_zero:
        return {}
    preprocess = PreprocessSettings(**as_dict(cfg.data.preprocess))
    free_class = cfg.data.get("free_class", "MT_Free")
    settings = ModelSettings(
        net=dict(module.net_config),
        preprocess=preprocess,
        class_names=module.class_names,
        postprocess=PostprocessSettings(free_class=free_class),
    )
    net = module.net.cpu().eval().to(memory_format=torch.contiguous_format)
    val_records = read_manifest(paths.manifest, "val")
    refit = as_dict(cfg.get("head_refit", {}))
    head_report = None
    if module.class_names and refit.get("enabled", False):
        # the head refitted on whole training tiles (model/head_fit.py); L2 chosen on validation
        head_report = refit_head_from_manifest(
            net,
            paths.data_dir,
            paths.manifest,
            module.class_names,
            module.free_index,
            preprocess,
            refit,
        )
    predictor = Predictor(settings, torch_runner(net), "torch-cpu")
    flips, post, report = calibrate_on_validation(
        predictor, paths.data_dir, val_records, as_dict(cfg.get("calibration", {}))
    )
    chosen = report["chosen"]
    info = {
        "val": {k: v for k, v in chosen.items() if k not in ("confusion",)},
        "best_checkpoint": Path(best).name if best else None,
        "epochs": trainer.current_epoch,
        "pretrained": {k: v for k, v in module.pretrained_report.items() if k != "unused"},
        "head_refit": head_report["chosen"] if head_report else None,
    }
    settings = replace(settings, postprocess=post, info=info, test_time_flips=flips)
    write_model_dir(net, settings, paths.model_dir)
    write_json_atomic(Path(paths.model_dir) / "calibration.json", report)
    if head_report:
        write_json_atomic(Path(paths.model_dir) / "head_refit.json", head_report, indent=2)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    print(
        f"train: {trainer.current_epoch} epochs in {fit_seconds:.0f}s; val dice {chosen['dice']:.3f} "
        f"(mean per class {chosen['mean_class_dice']:.3f}) recall {chosen['recall']:.3f} "
        f"false alarms {chosen['false_alarm_rate']:.3f} auroc {chosen['auroc']:.3f} "
        f"(pixel threshold {post.threshold}, min area {post.min_region_area}, score {post.score_source}"
        f"/{post.score_window}, decision threshold {post.decision_threshold:.4f}, "
        f"test-time flips {list(flips) or 'none'}) → {paths.model_dir}"
    )
    result = {
        "val/dice": chosen["dice"],
        "val/dice_ungated": chosen["dice_ungated"],
        "val/mean_class_dice": chosen["mean_class_dice"],
        "val/recall": chosen["recall"],
        "val/objective": chosen["objective"],
        "val/false_alarm_rate": chosen["false_alarm_rate"],
        "val/auroc": chosen["auroc"],
        **{f"val/dice/{c}": v for c, v in chosen["per_class_dice"].items()},
        "train/seconds": round(fit_seconds, 1),
        "train/epochs": trainer.current_epoch,
    }
    if "classification" in chosen:
        result["val/class_accuracy"] = chosen["classification"]["accuracy"]
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: each (multi)run writes into its own Hydra output folder."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(cfg):
        cfg.paths.model_dir = str(out / "model")
        cfg.paths.checkpoint_dir = str(out / "checkpoints")
        cfg.paths.live_dir = str(out / "dvclive")
    result = train(cfg)
    return float(result.get(cfg.get("optimized_metric", "val/objective"), 0.0))


if __name__ == "__main__":
    main()
