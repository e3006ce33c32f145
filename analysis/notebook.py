"""Small helpers the notebooks share: where the results are, and showing an artifact inline.

The notebooks (``paper_tables.ipynb``, ``paper_figures.ipynb``) call the same product functions
as ``python -m analysis``; these helpers only locate inputs and display what was written.
``SEGDISTILL_RESULTS`` / ``SEGDISTILL_REPORTS`` override the default ``results/`` and
``reports/`` next to the repository root (the tests point them at a fixture tree).
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import Report, Results, load
from .make_all import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def paths() -> tuple[Path, Path]:
    """(results root, reports folder) from ``SEGDISTILL_RESULTS`` / ``SEGDISTILL_REPORTS``."""
    return (Path(os.environ.get("SEGDISTILL_RESULTS", ROOT / "results")),
            Path(os.environ.get("SEGDISTILL_REPORTS", ROOT / "reports")))


def open_results() -> tuple[Results, Report]:
    """Load the results tree and a fresh :class:`Report` writing into the reports folder
    (figure formats from ``SEGDISTILL_FIGURE_FORMATS``, default ``png,pdf``)."""
    results, reports = paths()
    formats = tuple(f for f in os.environ.get("SEGDISTILL_FIGURE_FORMATS", "png,pdf").split(",") if f)
    return load(results), Report(reports, commands=dict(COMMANDS), figure_formats=formats)


def show(report: Report, key: str) -> None:
    """Display every artifact ``key`` produced (Markdown tables, PNG figures) or why it is missing."""
    from IPython.display import Image, Markdown, display

    made = [a for a in report.artifacts if a.key == key]
    for a in made:
        for p in a.paths:
            if p.suffix == ".md":
                display(Markdown(p.read_text()))
            elif p.suffix == ".png":
                display(Image(filename=str(p)))
    for m in report.missing:
        if m.key == key:
            display(Markdown(f"**{m.title}: not made.** {m.why}. Make its inputs with `{m.command}`."))
