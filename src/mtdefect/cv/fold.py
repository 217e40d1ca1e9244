"""One cross-validation fold: train on the fold's manifest, then score its held-out tiles.

    python -m mtdefect.cv.fold 3          # fold 3 of params.yaml's cv settings (what the stage runs)

A finished fold (its rows file carries the fingerprint of the config and the fold manifest) is not
recomputed; a killed one resumes from its own checkpoint folder (``train.resume_checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mtdefect.data.folds import fold_manifest_path, group_ids, job_name
from mtdefect.data.split import read_manifest
from mtdefect.fileio import sha256_file, write_json_atomic


@dataclass(frozen=True)
class CvPaths:
    """Where cross-validation keeps its files (``cv.*`` in params.yaml, relative to the repo root)."""

    manifest_dir: Path  # fold_<i>.csv
    model_dir: Path  # fold_<i>/: each fold's model folder (weights + settings)
    checkpoint_dir: Path  # fold_<i>/: an unfinished fold's checkpoints
    rows_dir: Path  # fold_<i>.json: the held-out fold's per-image rows

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> CvPaths:
        c = cfg.cv
        return cls(Path(c.manifest_dir), Path(c.model_dir), Path(c.checkpoint_dir), Path(c.rows_dir))

    def rows(self, fold: int | str) -> Path:
        return self.rows_dir / f"{job_name(fold)}.json"


def unseen_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the cross-validation folders swapped for the leave-one-class-out ones (``cv.unseen``)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        for key in ("manifest_dir", "model_dir", "checkpoint_dir", "rows_dir"):
            out.cv[key] = out.cv.unseen[key]
    return out


def job_config(cfg: DictConfig, job: int | str) -> DictConfig:
    """The config a job runs under: a fold (an int) under ``cv.*``; a leave-one-class-out job
    (``unseen_<class>``) under ``cv.unseen.*``, whether the unseen stage runs it in-process or
    ``cv.jobs`` > 1 starts it as ``python -m mtdefect.cv.fold unseen_<class>``."""
    return unseen_config(cfg) if isinstance(job, str) and job.startswith("unseen_") else cfg


def fold_config(cfg: DictConfig, fold: int | str, paths: CvPaths) -> DictConfig:
    """``cfg`` (params.yaml, already resolved) pointed at fold ``fold``: its manifest, model and
    checkpoint folders; no experiment logger (one DVCLive folder per fold would fight over the
    pipeline's). Refuses a config that still names the pipeline's own manifest, model or
    checkpoint folder anywhere (a new key that points at them would leak across folds)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    base = {str(cfg.paths.manifest), str(cfg.paths.model_dir), str(cfg.paths.checkpoint_dir)}
    manifest = str(fold_manifest_path(paths.manifest_dir, fold))
    checkpoints = str(paths.checkpoint_dir / job_name(fold))
    with open_dict(out):
        out.paths.manifest = manifest
        out.paths.model_dir = str(paths.model_dir / job_name(fold))
        out.paths.checkpoint_dir = checkpoints
        out.data.module.manifest = manifest
        out.trainer.default_root_dir = checkpoints
        for callback in (out.get("callbacks") or {}).values():
            if callback is not None and "dirpath" in callback:
                callback.dirpath = checkpoints
        out.logger = None
    leftovers = [key for key, value in _strings(out) if value in base]
    if leftovers:
        raise ValueError(f"fold config still points at the pipeline's own files: {', '.join(leftovers)}")
    return out


def _strings(node: Any, prefix: str = ""):
    if isinstance(node, DictConfig):
        for key in node:
            yield from _strings(node[key], f"{prefix}{key}.")
    elif OmegaConf.is_list(node):
        for i, item in enumerate(node):
            yield from _strings(item, f"{prefix}{i}.")
    elif isinstance(node, str):
        yield prefix.rstrip("."), node


# The code a fold's result depends on (what cv/dvc.yaml lists as the stage's code deps).
PACKAGE = Path(__file__).resolve().parents[1]
CODE = ("cv", "data", "model", "inference", "train.py", "calibrate.py", "scoring.py", "metrics.py")


def code_digest() -> str:
    """sha256 over the package's Python files that train and score a fold: after a code change a
    finished fold is computed again, as DVC reruns a stage whose code deps changed."""
    digest = hashlib.sha256()
    for name in CODE:
        files = sorted((PACKAGE / name).rglob("*.py")) if (PACKAGE / name).is_dir() else [PACKAGE / name]
        for file in files:
            digest.update(f"{file.relative_to(PACKAGE).as_posix()}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def fold_fingerprint(cfg: DictConfig, manifest: Path) -> str:
    """What a fold's result depends on: the training config (seed, data, model, trainer, callbacks,
    head refit, calibration), the fold manifest's bytes and the code (``code_digest``)."""
    keys = ("seed", "data", "model", "trainer", "callbacks", "head_refit", "calibration")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    payload = {k: resolved.get(k) for k in keys}
    payload["manifest"] = sha256_file(manifest)
    payload["code"] = code_digest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def is_finished(rows_file: Path, fingerprint: str) -> bool:
    try:
        return json.loads(rows_file.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def score_held_out(
    model_dir: Path, data_dir: Path, manifest: Path, group_gap: int | None, predictor: Any = None
) -> list[dict]:
    """The held-out (``test``) images of a fold manifest through the service's path (decode →
    Predictor with the fold model's own settings, or ``predictor`` → postprocess, native size): one
    row each."""
    from mtdefect.inference import Predictor
    from mtdefect.scoring import image_row, score_split

    records = read_manifest(manifest, "test")
    if not records:
        raise ValueError(f"{manifest} holds no held-out (test) images")
    predictor = predictor or Predictor.from_dir(model_dir, backend="torch")
    everyone = read_manifest(manifest)
    groups = group_ids([(r.class_name, Path(r.image).stem) for r in everyone], group_gap)
    rows = []
    for item in score_split(predictor, data_dir, records):
        row = image_row(item, predictor.settings.postprocess)
        row["group"] = groups[(item.record.class_name, Path(item.record.image).stem)]
        rows.append(row)
    return rows


def score_reference(model_dir: Path, data_dir: Path, manifest: Path, free_class: str) -> list[float]:
    """Tile scores of the fold's clean validation images under the fold model's own settings: the
    reference other scorers are normalised against when they are fused with this one
    (``cv.decision``). Never the held-out fold."""
    from mtdefect.inference import Predictor
    from mtdefect.scoring import image_row, score_split

    records = [r for r in read_manifest(manifest, "val") if r.class_name == free_class]
    predictor = Predictor.from_dir(model_dir, backend="torch")
    return [
        image_row(item, predictor.settings.postprocess)["score"]
        for item in score_split(predictor, data_dir, records)
    ]


def run_fold(cfg: DictConfig, fold: int | str) -> dict:
    """Train and score fold ``fold`` unless its rows are already there for this config."""
    from mtdefect.inference import ModelSettings
    from mtdefect.train import train

    paths = CvPaths.from_cfg(cfg)
    manifest = fold_manifest_path(paths.manifest_dir, fold)
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: the cv stage writes the fold manifests first")
    fingerprint = fold_fingerprint(cfg, manifest)
    rows_file = paths.rows(fold)
    if is_finished(rows_file, fingerprint):
        print(f"cv: fold {fold} already finished for this config ({rows_file}); not recomputed")
        return json.loads(rows_file.read_text())
    started = time.perf_counter()
    fcfg = fold_config(cfg, fold, paths)
    validation = train(fcfg)
    model_dir = Path(fcfg.paths.model_dir)
    rows = score_held_out(model_dir, Path(cfg.paths.data_dir), manifest, cfg.data.split.get("group_gap"))
    reference = score_reference(model_dir, Path(cfg.paths.data_dir), manifest, cfg.data.free_class)
    result = {
        "fold": fold,
        "fingerprint": fingerprint,
        "seconds": round(time.perf_counter() - started, 1),
        "decision_threshold": ModelSettings.load(model_dir).postprocess.decision_threshold,
        "validation": validation,
        "reference_scores": reference,
        "rows": rows,
    }
    write_json_atomic(rows_file, result, indent=1)
    print(f"cv: fold {fold}: {len(rows)} held-out images scored in {result['seconds']:.0f}s → {rows_file}")
    return result


def main(argv: list[str] | None = None) -> None:
    from mtdefect.stages._common import run

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (args[0].isdigit() or args[0].startswith("unseen_")):
        print("usage: python -m mtdefect.cv.fold FOLD|unseen_<class>", file=sys.stderr)
        sys.exit(2)
    job: int | str = int(args[0]) if args[0].isdigit() else args[0]
    run(lambda cfg: run_fold(job_config(cfg, job), job), f"cv fold {args[0]}")


if __name__ == "__main__":
    main()
