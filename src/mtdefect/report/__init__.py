"""The evaluation report: what a CML comment posts on a pull request.

Inputs are the evaluate stage's outputs (``reports/metrics.json``, ``reports/plots/*.json``,
``reports/overlays/worst_*.png``); output is one Markdown file plus a folder of PNGs it links to
(relative paths, so ``cml comment create reports/report.md`` can upload them).

    build_report("reports", "reports/report.md", "reports/report_assets", params={...})

``data`` reads the inputs, ``figures`` draws one matplotlib figure per function, ``markdown`` writes
the text, ``build`` puts them together. ``python -m mtdefect.report <dvclive dir> <out.png>`` draws
the training curves of a run.
"""

from mtdefect.report.build import build_report
from mtdefect.report.data import average_precision, load_inputs, read_tsv
from mtdefect.report.markdown import fmt, render_markdown

__all__ = ["average_precision", "build_report", "fmt", "load_inputs", "read_tsv", "render_markdown"]
