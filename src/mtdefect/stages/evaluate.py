"""Stage: model folder + test split → reports/metrics.json, plot data, overlays."""

from omegaconf import DictConfig

from mtdefect.evaluate import evaluate, evaluate_backends, with_exports
from mtdefect.stages._common import run


def stage(cfg: DictConfig) -> None:
    e = cfg.evaluate
    onnx_dir = cfg.paths.get("onnx_dir")
    with with_exports(
        cfg.paths.model_dir, onnx_dir if str(e.backend).startswith("onnx") else None
    ) as model_dir:
        result = _evaluate(cfg, model_dir)
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
    extra = list(e.get("extra_backends") or [])
    if extra:  # e.g. [onnx-int8]: reports/metrics_onnx-int8.json with its parity against FP32 ONNX
        results = evaluate_backends(
            cfg.paths.model_dir,
            onnx_dir,
            cfg.paths.data_dir,
            cfg.paths.manifest,
            cfg.paths.reports_dir,
            extra,
            reference=e.get("reference_backend", "onnx"),
            split=e.split,
        )
        for backend, summary in results.items():
            p = summary["parity"]
            print(
                f"evaluate: {backend} vs {p['reference']}: dice {summary['dice']:.3f} "
                f"(Δ {p['dice_delta']:.4f}), "
                f"AUROC Δ {p['auroc_delta']:.4f}, same decision on {p['same_decision_rate']:.2%} of "
                f"{p['tiles']} tiles → parity {'holds' if p['holds'] else 'FAILS'}"
            )


def _evaluate(cfg: DictConfig, model_dir) -> dict:
    e = cfg.evaluate
    return evaluate(
        model_dir,
        cfg.paths.data_dir,
        cfg.paths.manifest,
        cfg.paths.reports_dir,
        split=e.split,
        backend=e.backend,
        n_overlays=e.overlays,
        worst_n=e.worst,
    )


if __name__ == "__main__":
    run(stage, "evaluate")
