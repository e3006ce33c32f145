"""Shared pieces of the analysis: loading a results tree once, selecting runs, writing outputs.

Runs are identified by config columns (``distill.method``, ``model.arch``, ``data.name``,
``distill.beta``, ``distill.mu``, ``distill.weighting``, ``distill.tau_prime``,
``distill.pixel_correction``, ``run.seed``) plus two ``trials`` columns written from tags:
``role`` ("teacher"/"student") and ``group`` (the experiment group, e.g. "beta", "softmax",
"mu", "cwd_ref", "pixel_correction"). When a ``group`` is absent the selectors fall back to
config values (documented per function).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from segdistill import results as rs  # noqa: E402

log = logging.getLogger("analysis")

METHOD = "distill.method"
STUDENT = "model.arch"
DATASET = "data.name"
BETA = "distill.beta"
MU = "distill.mu"
WEIGHTING = "distill.weighting"
TAU_PRIME = "distill.tau_prime"
PIXEL = "distill.pixel_correction"
SEED = "run.seed"
TEACHER_ARCH = "distill.teacher_arch"
METRIC = "best_miou"

METHOD_LABELS = {"none": "baseline", "kd": "KD", "cwd": "CWD", "hwd": "HWD", "teacher": "teacher"}
METHOD_ORDER = ["teacher", "baseline", "KD", "SKD", "IFVD", "CWD", "CIRKD", "DIST", "MGD", "HWD"]
ABLATION_GROUPS = frozenset({"beta", "softmax", "mu", "pixel_correction", "pixel", "cwd_ref"})


def method_label(method: Any) -> str:
    return METHOD_LABELS.get(str(method), str(method).upper())


def method_sort_key(label: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER), label)


@dataclass
class Results:
    """All tables of a results tree, read once. Non-``trials`` tables carry the trial columns."""

    trials: pd.DataFrame
    per_class: pd.DataFrame
    curves: pd.DataFrame
    embeddings: pd.DataFrame
    samples: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.trials.empty


def _join(rows: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    if rows.empty or trials.empty:
        return pd.DataFrame()
    return rows.merge(trials, on=["study", "trial_id"], how="inner", suffixes=("", "_trial"))


def load(results_root: str | Path, *, statuses: Iterable[str] = ("completed",)) -> Results:
    """Read every table under ``results_root`` (FileNotFoundError if it does not exist).

    Only trials whose ``status`` is in ``statuses`` are kept (default: completed runs; ASHA-stopped
    or failed trials would bias the means). Adds a ``method_label`` column: "teacher" for
    ``role == "teacher"``, else the method's display name ("baseline", "CWD", "HWD", ...).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.EmptyResultsWarning)
        tables = {t: rs.read_table(results_root, t) for t in rs.TABLES}
    trials = tables["trials"]
    if not trials.empty:
        if "status" in trials:
            trials = trials[trials["status"].isin(list(statuses))]
        trials = trials.copy()
        role = trials["role"] if "role" in trials else pd.Series("student", index=trials.index)
        method = trials[METHOD] if METHOD in trials else pd.Series("none", index=trials.index)
        trials["method_label"] = [("teacher" if r == "teacher" else method_label(m)) for r, m in zip(role, method)]
        if "group" not in trials:
            trials["group"] = np.nan
        trials = trials.reset_index(drop=True)
    return Results(trials=trials, **{t: _join(tables[t], trials) for t in rs.TABLES if t != "trials"})


def main_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are not part of an ablation sweep (``group`` not in ABLATION_GROUPS)."""
    if df.empty or "group" not in df:
        return df
    return df[~df["group"].isin(list(ABLATION_GROUPS))]


def by_group(df: pd.DataFrame, group: str, fallback: pd.Series | None) -> pd.DataFrame:
    """Rows tagged ``group``; if none are tagged so, rows selected by the ``fallback`` mask."""
    if df.empty:
        return df
    if "group" in df and (df["group"] == group).any():
        return df[df["group"] == group]
    if fallback is None:
        return df.iloc[0:0]
    return df[fallback.reindex(df.index, fill_value=False)]


def col(df: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    return df[name] if name in df else pd.Series(default, index=df.index)


def percent_factor(values: Iterable[float]) -> float:
    """100 if the values look like fractions (all <= 1), else 1: mIoU/IoU are shown in percent."""
    arr = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    return 100.0 if len(arr) and float(arr.abs().max()) <= 1.0 else 1.0


def slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(p)).strip("-") for p in parts if str(p))


# -- outputs --------------------------------------------------------------------------------

@dataclass
class Report:
    """What a run of the analysis produced and skipped."""

    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def skip(self, what: str, why: str = "") -> None:
        msg = f"no data for {what}" + (f" ({why})" if why else "")
        log.info(msg)
        self.skipped.append(msg)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = [[_cell(v).replace("|", "\\|") for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{", "}": r"\}",
        "$": r"\$", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(s: str) -> str:
    parts = s.split("+/-")
    return r"$\pm$".join("".join(_TEX.get(ch, ch) for ch in part) for part in parts)


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    cols = [_tex_escape(str(c)) for c in df.columns]
    out = [r"\begin{table}[t]", r"\centering"]
    if caption:
        out.append(rf"\caption{{{_tex_escape(caption)}}}")
    out += [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\hline", " & ".join(cols) + r" \\", r"\hline"]
    out += [" & ".join(_tex_escape(_cell(v)) for v in r) + r" \\" for r in df.itertuples(index=False)]
    out += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def save_table(report: Report, name: str, data: pd.DataFrame, display: pd.DataFrame | None = None,
               caption: str = "") -> list[Path]:
    """``name``.csv (raw numbers, ``data``), .md and .tex (formatted, ``display`` or ``data``)."""
    report.tables.mkdir(parents=True, exist_ok=True)
    display = data if display is None else display
    paths = [report.tables / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    data.to_csv(paths[0], index=False)
    paths[1].write_text((f"**{caption}**\n\n" if caption else "") + to_markdown(display))
    paths[2].write_text(to_latex(display, caption))
    report.written.extend(paths)
    log.info("wrote table %s", name)
    return paths


def save_figure(report: Report, name: str, fig: plt.Figure) -> list[Path]:
    report.figures.mkdir(parents=True, exist_ok=True)
    paths = [report.figures / f"{name}.{ext}" for ext in ("png", "pdf")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    report.written.extend(paths)
    log.info("wrote figure %s", name)
    return paths


def mean_std(values: pd.Series) -> tuple[float, float, int]:
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(np.float64)
    if not len(x):
        return math.nan, math.nan, 0
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) >= 2 else math.nan), len(x)


def pm(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``"33.85 +/- 0.10 (n=3)"``; a single seed prints ``"33.85 (n=1)"``."""
    if n == 0 or math.isnan(mean):
        return ""
    if n < 2 or math.isnan(std):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} +/- {std:.{digits}f} (n={n})"
