"""Regenerate the paper's tables and figures from a segdistill results tree.

``python -m analysis --results results --out reports`` or ``analysis.make_all.make_all(results, out)``.
Every product function takes a :class:`~analysis.common.Results` (``load(root)``) and a
:class:`~analysis.common.Report` (where outputs go, what was made from which studies, what could
not be made and why); ``make_all.products()`` lists them. ``paper_tables.ipynb`` and
``paper_figures.ipynb`` call the same functions.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("segdistill") is None:  # uninstalled checkout: use the src layout next to us
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))

from analysis.common import Report, Results, load  # noqa: E402

__all__ = ["Report", "Results", "load"]
