"""Stage: evaluate's outputs → reports/report.md + reports/report_assets/ (what CI posts with CML)."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtdefect.report import build_report
from mtdefect.stages._common import run

# params shown in the report's header (dotted keys of params.yaml; missing ones are skipped)
SHOWN_PARAMS = ("model.arch", "model.encoder", "model.lr", "trainer.max_epochs", "data.module.crop_size")


def stage(cfg: DictConfig) -> None:
    reports = Path(cfg.paths.reports_dir)
    shown = {key: OmegaConf.select(cfg, key) for key in SHOWN_PARAMS}
    out = build_report(
        reports,
        reports / "report.md",
        reports / "report_assets",
        worst_n=int(OmegaConf.select(cfg, "evaluate.worst", default=6)),
        params={k: v for k, v in shown.items() if v is not None},
    )
    print(f"report: {out} ({len(list((reports / 'report_assets').glob('*.png')))} images)")


if __name__ == "__main__":
    run(stage, "report")
