"""Stage: model folder + test split → reports/metrics.json, plot data, overlays."""

from omegaconf import DictConfig

from mtdefect.evaluate import evaluate
from mtdefect.stages._common import run


def stage(cfg: DictConfig) -> None:
    e = cfg.evaluate
    result = evaluate(
        cfg.paths.model_dir,
        cfg.paths.data_dir,
        cfg.paths.manifest,
        cfg.paths.reports_dir,
        split=e.split,
        backend=e.backend,
        n_overlays=e.overlays,
        worst_n=e.worst,
    )
    t = result["test"]
    per_class = ", ".join(f"{k.removeprefix('MT_')} {v:.3f}" for k, v in t["per_class_dice"].items())
    d = t["detection"]
    print(
        f"evaluate: dice {t['dice']:.3f} iou {t['iou']:.3f} | {per_class} | recall {d['recall']:.3f} "
        f"false alarms {d['false_alarm_rate']:.3f} auroc {d['auroc']:.3f} ({t['images']} images)"
    )
    if "classification" in t:
        print(
            f"evaluate: defect class top-1 accuracy {t['classification']['accuracy']:.3f} on defective tiles"
        )


if __name__ == "__main__":
    run(stage, "evaluate")
