"""The README's results and performance tables, generated from the files the pipeline and the
benchmarks write, so the numbers in the docs cannot drift from them (``make docs``).

    python -m mtdefect.docs_tables README.md            # rewrite the tables between the markers
    python -m mtdefect.docs_tables README.md --check    # exit 1 if the README is not what this writes
    python -m mtdefect.docs_tables docs/PERFORMANCE.md  # its ``lite0`` block (the #14 benchmarks)
    python -m mtdefect.docs_tables docs/MODEL_QUALITY.md  # its ``screen`` block (head-refit screens)
    python -m mtdefect.docs_tables --save-seed reports/seeds/seed_43.json   # keep a finished run

A table lives between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; everything outside the
markers is left alone. One module per block, one small function per table:

- ``results``     (README, ``results.py``): pipeline runs; which files feed which row: ``RESULT_ROWS``;
- ``cv``          (README, ``cv.py``): grouped k-fold cross-validation, one row per recipe;
- ``unseen``      (README, ``unseen.py``): leave one defect class out, one row per class;
- ``performance`` (README, ``performance.py``): benchmark targets; ``PERFORMANCE_ROWS``;
- ``lite0``       (docs/PERFORMANCE.md, ``lite0.py``): the current model's detail tables, ``SECTIONS``;
- ``screen``      (docs/MODEL_QUALITY.md, ``screen.py``): every committed head-refit screen, a row a variant;
- ``common.py``: formatting, the markdown table, reading a result and naming its model and load.

Every row names the model its numbers measured (``common.benchmark_model``: ``model.net`` of the
result, or ``UNRECORDED`` with ``†`` for old files that do not record it).

Adding a table (e.g. serving under load from a new ``benchmarks/results/<name>.json``):

1. write ``def my_table(root: Path) -> str`` in a module here (or a function returning lines added to
   ``lite0.SECTIONS``, or a row added to ``PERFORMANCE_ROWS`` when it judges a target); read the
   result with ``common.opened(root, "<name>.json")`` and return "" / [] when it is not committed;
   name the model with ``common.benchmark_model`` and the load with ``common.load_span``;
2. register a new block in ``GENERATORS`` below (``"my_block": my_table``);
3. put ``<!-- BEGIN my_block -->`` / ``<!-- END my_block -->`` where it belongs in the doc and run
   ``make docs``; ``tests/workflow/test_docs_tables.py`` checks the committed docs are what this writes.

Inputs (paths relative to the repository root):

- ``reports/metrics.json`` (test split) and ``reports/validation.json``: the committed baseline
  run; its seed and model are the train stage's params recorded in ``dvc.lock`` (what produced
  the committed outputs), or ``params.yaml`` without a lock;
- ``reports/seeds/*.json`` (optional): one file per finished seed of a config, written by
  ``--save-seed`` from the same files: ``{"seed", "params", "metrics", "validation"}``;
  shown as mean ± std (sample std) when present;
- ``benchmarks/results/*.json``: the benchmarks' results; each names its model (``model.net``,
  written by the benchmarks since the model record was added) or, for older files that do not,
  the encoder is given in ``PERFORMANCE_ROWS`` (``model_if_unrecorded``) and marked with ``†``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mtdefect.docs_tables.cv import cv_table
from mtdefect.docs_tables.lite0 import lite0_detail
from mtdefect.docs_tables.performance import PERFORMANCE_ROWS, performance_table
from mtdefect.docs_tables.results import RESULT_ROWS, results_table, save_seed
from mtdefect.docs_tables.screen import screen_table
from mtdefect.docs_tables.serving import serving_load_table
from mtdefect.docs_tables.unseen import unseen_table
from mtdefect.fileio import write_text_atomic

__all__ = [
    "GENERATORS",
    "cv_table",
    "PERFORMANCE_ROWS",
    "RESULT_ROWS",
    "lite0_detail",
    "main",
    "performance_table",
    "render",
    "results_table",
    "save_seed",
    "screen_table",
    "unseen_table",
]

# block name -> the function that writes its body (the text between the markers)
GENERATORS: dict[str, Callable[[Path], str]] = {
    "results": results_table,
    "cv": cv_table,
    "unseen": unseen_table,  # optional: README shows it where its markers are
    "performance": performance_table,
    "lite0": lite0_detail,
    "serving_load": serving_load_table,  # docs/PERFORMANCE.md (issue #22)
    "screen": screen_table,  # docs/MODEL_QUALITY.md: the head-refit screens
}
# the blocks the README must have (docs/PERFORMANCE.md has the ``lite0`` block)
README_BLOCKS = ("results", "cv", "performance")

MARKER = re.compile(
    r"(<!-- BEGIN (?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.DOTALL
)


def render(text: str, root: Path, required: Sequence[str] = README_BLOCKS) -> str:
    """``text`` with every known marker block regenerated; unknown blocks, or missing ``required``
    ones, are an error."""
    found = [m.group("name") for m in MARKER.finditer(text)]
    unknown = sorted(set(found) - set(GENERATORS))
    missing = sorted(set(required) - set(found))
    if unknown or missing:
        raise ValueError(
            f"README markers: unknown {unknown}, missing {missing} "
            "(<!-- BEGIN name --> ... <!-- END name -->)"
        )
    return MARKER.sub(lambda m: m.group(1) + GENERATORS[m.group("name")](root) + m.group(4), text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtdefect.docs_tables", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("readme", nargs="?", default="README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs; write nothing")
    parser.add_argument("--root", default=None, help="repository root (default: the README's folder)")
    parser.add_argument("--save-seed", metavar="OUT", help="bundle the current run into OUT and exit")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    root = Path(args.root) if args.root else readme.resolve().parent
    if not args.root and readme.name != "README.md":  # e.g. docs/PERFORMANCE.md: the repository above it
        root = next((p for p in readme.resolve().parents if (p / "pyproject.toml").exists()), root)
    if args.save_seed:
        print(f"wrote {save_seed(root, Path(args.save_seed))}")
        return 0
    text = readme.read_text(encoding="utf-8")
    new = render(text, root, README_BLOCKS if readme.name == "README.md" else ())
    if args.check:
        if new != text:
            print(f"{readme} is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        write_text_atomic(readme, new)
    print(f"{readme}: {'updated' if new != text else 'unchanged'}")
    return 0
