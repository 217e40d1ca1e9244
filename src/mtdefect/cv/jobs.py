"""Run cross-validation folds one after another or side by side, each a resumable job.

``jobs=1`` trains the folds in this process, one after the other, each with every core.
``jobs=N`` starts ``python -m mtdefect.cv.fold I`` for N folds at a time, each with cores/N threads
(on this 2-core machine two one-thread folds cost about what one two-thread fold costs; on a bigger
box it is how the folds fill it). Folds on several machines: run ``python -m mtdefect.cv.fold I``
on each with a shared working tree, then the stage again, which only pools what is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import DictConfig

from mtdefect.cv.fold import CvPaths, fold_fingerprint, is_finished, run_fold
from mtdefect.data.folds import fold_manifest_path, job_name


def pending(cfg: DictConfig, folds: Sequence[int | str]) -> list[int | str]:
    """The folds whose rows are missing or were made under another config or manifest."""
    paths = CvPaths.from_cfg(cfg)
    return [
        f
        for f in folds
        if not is_finished(paths.rows(f), fold_fingerprint(cfg, fold_manifest_path(paths.manifest_dir, f)))
    ]


def run_folds(cfg: DictConfig, folds: Sequence[int | str], jobs: int = 1) -> None:
    """Make every fold in ``folds`` finished (skipping those that are); raise if any fails."""
    todo = pending(cfg, folds)
    skipped = [f for f in folds if f not in todo]
    if skipped:
        print(f"cv: folds {skipped} already finished for this config; not recomputed")
    if not todo:
        return
    if jobs <= 1:
        for fold in todo:
            run_fold(cfg, fold)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log_dir = CvPaths.from_cfg(cfg).checkpoint_dir
    log_dir.mkdir(parents=True, exist_ok=True)

    def launch(fold: int | str) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        log = Path(log_dir) / f"{job_name(fold)}.log"
        with open(log, "w") as handle:
            code = subprocess.call(
                [sys.executable, "-m", "mtdefect.cv.fold", str(fold)],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        print(f"cv: fold {fold} {'finished' if code == 0 else f'failed (exit {code}), see {log}'}")
        return code

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = dict(zip(todo, pool.map(launch, todo)))
    failed = [f for f, code in codes.items() if code != 0]
    if failed:
        raise RuntimeError(
            f"cross-validation folds {failed} failed; rerun to resume them (finished folds are kept)"
        )
