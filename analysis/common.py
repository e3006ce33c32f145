"""Shared pieces of the analysis: loading a results tree once, selecting runs, writing outputs.

Runs are identified by config columns (``distill.method``, ``model.arch``, ``data.name``,
``distill.beta``, ``distill.mu``, ``distill.weighting``, ``distill.tau_prime``,
``distill.pixel_correction``, ``run.seed``) plus ``trials`` columns written from the study
layer's tags: ``role`` ("teacher"/"student"), ``group`` (the experiment group: "comparison",
"class_analysis", "beta", "softmax", "mu", "cwd_ref", "pixel_correction", "search") and
``setting``. Each experiment script writes one study directory ``<script>-<preset>``
(``segdistill.study.cli_args.study_name``); the zoo teacher a study distilled from is copied into
that study with the same ``trial_id`` in every study, so teacher rows are de-duplicated by
``trial_id`` wherever several studies are combined.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from segdistill import catalog  # noqa: E402
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
METRIC = catalog.REPORTED_METRIC  # last_evals_miou: what the experiment scripts print too (one definition: catalog.py)

# Display names of registered methods ("none" is the CE-only baseline); unknown names are upper-cased.
METHOD_LABELS = {"none": "baseline", "kd": "KD", "skd": "SKD", "ifvd": "IFVD", "cwd": "CWD", "cirkd": "CIRKD",
                 "dist": "DIST", "mgd": "MGD", "hwd": "HWD", "teacher": "teacher"}
# Fixed order of known methods in every table and figure; unknown methods follow, alphabetically.
METHOD_ORDER = ["baseline", "KD", "SKD", "IFVD", "CWD", "CIRKD", "DIST", "MGD", "HWD", "teacher"]
# Fixed colours so a method looks the same in every figure (CWD blue as in the paper's Figs. 6/7).
METHOD_COLOURS = {"baseline": "#7f7f7f", "KD": "#bcbd22", "SKD": "#8c564b", "IFVD": "#e377c2", "CWD": "#1f77b4",
                  "CIRKD": "#9467bd", "DIST": "#17becf", "MGD": "#ff7f0e", "HWD": "#d62728", "teacher": "#2ca02c"}
_EXTRA_COLOURS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]
ABLATION_GROUPS = catalog.ABLATION_GROUPS
SEARCH_GROUPS = frozenset({catalog.SEARCH})


def method_label(method: Any) -> str:
    return METHOD_LABELS.get(str(method), str(method).upper())


def method_sort_key(label: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER), str(label))


def ordered_methods(labels: Iterable[str], *, teacher_last: bool = True) -> list[str]:
    """Distinct labels in the fixed method order (unknown ones after the known students, teacher last)."""
    out = sorted(set(labels), key=method_sort_key)
    if teacher_last and "teacher" in out:
        out = [m for m in out if m != "teacher"] + ["teacher"]
    return out


def method_colour(label: str) -> str:
    if label in METHOD_COLOURS:
        return METHOD_COLOURS[label]
    return _EXTRA_COLOURS[sum(map(ord, str(label))) % len(_EXTRA_COLOURS)]


def arch_label(arch: Any) -> str:
    """``deeplabv3_r18`` -> ``DeepLab-R18``; ``pspnet_tiny_mbv2`` -> ``PSPNet-tiny-MBV2``."""
    parts = str(arch).split("_")
    head = {"deeplabv3": "DeepLab", "pspnet": "PSPNet"}.get(parts[0], parts[0])
    rest = [p if p == "tiny" else p.upper() for p in parts[1:]]
    return "-".join([head, *rest])


@dataclass
class Results:
    """All tables of a results tree, read once. Non-``trials`` tables carry the trial columns.

    ``all_trials`` keeps every status (the Optuna search also reports ASHA-stopped trials);
    ``trials`` and the joined tables hold only the statuses asked for (default: completed).
    """

    trials: pd.DataFrame
    per_class: pd.DataFrame
    curves: pd.DataFrame
    embeddings: pd.DataFrame
    samples: pd.DataFrame
    root: Path | None = None
    all_trials: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def empty(self) -> bool:
        return self.trials.empty

    def studies(self) -> list[str]:
        return sorted(self.all_trials["study"].unique()) if "study" in self.all_trials else []


def _join(rows: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    if rows.empty or trials.empty:
        return pd.DataFrame()
    return rows.merge(trials, on=["study", "trial_id"], how="inner", suffixes=("", "_trial"))


def _labelled(trials: pd.DataFrame) -> pd.DataFrame:
    trials = trials.copy()
    role = trials["role"] if "role" in trials else pd.Series("student", index=trials.index)
    method = trials[METHOD] if METHOD in trials else pd.Series("none", index=trials.index)
    trials["method_label"] = [("teacher" if r == "teacher" else method_label(m)) for r, m in zip(role, method)]
    for tag in ("group", "setting"):
        if tag not in trials:
            trials[tag] = np.nan
    return trials.reset_index(drop=True)


def load(results_root: str | Path, *, statuses: Iterable[str] = ("completed",)) -> Results:
    """Read every table under ``results_root`` (FileNotFoundError if it does not exist).

    Only trials whose ``status`` is in ``statuses`` are kept (default: completed runs; ASHA-stopped
    or failed trials would bias the means). Adds a ``method_label`` column: "teacher" for
    ``role == "teacher"``, else the method's display name ("baseline", "CWD", "HWD", ...).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.EmptyResultsWarning)
        tables = {t: rs.read_table(results_root, t) for t in rs.TABLES}
    all_trials = tables["trials"]
    trials = all_trials
    if not all_trials.empty:
        all_trials = _labelled(all_trials)
        trials = all_trials
        if "status" in trials:
            trials = trials[trials["status"].isin(list(statuses))].reset_index(drop=True)
    return Results(trials=trials, root=Path(results_root), all_trials=all_trials,
                   **{t: _join(tables[t], trials) for t in rs.TABLES if t != "trials"})


# -- selecting runs ---------------------------------------------------------------------------

def _str(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name].astype(str) if name in df else pd.Series("", index=df.index)


def from_experiment(df: pd.DataFrame, script: str, groups: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of the studies written by ``experiments/<script>.py`` (study ``<script>-<preset>``) or
    tagged with one of ``groups``; teachers copied into several studies appear once."""
    if df.empty or "study" not in df:
        return df.iloc[0:0] if not df.empty else df
    mask = experiment_column(df) == script
    if groups:
        mask |= _str(df, "group").isin(list(groups))
    return dedupe_teachers(df[mask])


def experiment_column(df: pd.DataFrame) -> pd.Series:
    """Each row's experiment (``segdistill.catalog``): its ``experiment`` tag; rows written before
    trials carried it get it from their study name (``catalog.experiment_of_study``)."""
    tag = df["experiment"] if "experiment" in df else pd.Series(np.nan, index=df.index, dtype=object)
    from_name = _str(df, "study").map(lambda s: catalog.experiment_of_study(s) or "")
    return tag.where(tag.notna() & (tag.astype(str) != ""), from_name).astype(str)


def dedupe_teachers(df: pd.DataFrame) -> pd.DataFrame:
    """Keep each teacher's rows from one study only (the zoo copies a teacher into every study)."""
    if df.empty or "method_label" not in df or "study" not in df:
        return df
    teacher = df["method_label"] == "teacher"
    if not teacher.any():
        return df
    first = df[teacher].groupby("trial_id")["study"].min()
    keep = ~teacher | (df["study"] == df["trial_id"].map(first))
    return df[keep]


def main_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are not part of an ablation sweep or a hyper-parameter search."""
    if df.empty or "group" not in df:
        return df
    return dedupe_teachers(df[~df["group"].isin(list(ABLATION_GROUPS | SEARCH_GROUPS))])


def tagged(df: pd.DataFrame, group: str) -> pd.DataFrame:
    """Rows whose ``group`` tag is ``group`` (a :mod:`segdistill.catalog` group name). Runs are found
    by their tags only: an untagged row belongs to no group, whatever its config values."""
    if df.empty or "group" not in df:
        return df.iloc[0:0]
    return df[df["group"] == group]


def students_of(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["method_label"] != "teacher"] if not df.empty and "method_label" in df else df


def teachers_for(df: pd.DataFrame, students: pd.DataFrame, dataset: str, pool: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
    """Teacher rows of ``dataset`` for ``students``: those in the students' own studies, else (from
    ``pool``) those whose architecture the students name in ``distill.teacher_arch``."""
    def pick(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return frame
        return frame[(frame["method_label"] == "teacher") & (_str(frame, DATASET) == dataset)]

    own = pick(df)
    if not students.empty and "study" in own:
        own = own[own["study"].isin(set(students["study"]))]
    if own.empty and pool is not None:
        own = pick(pool)
        archs = set(students[TEACHER_ARCH].dropna().astype(str)) - {""} if TEACHER_ARCH in students else set()
        if archs and STUDENT in own and own[STUDENT].astype(str).isin(archs).any():
            own = own[own[STUDENT].astype(str).isin(archs)]
    own = own.copy()
    if "study" in own:  # one copy per teacher
        first = own.groupby("trial_id")["study"].min()
        own = own[own["study"] == own["trial_id"].map(first)]
    return own


def col(df: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    return df[name] if name in df else pd.Series(default, index=df.index)


def percent_factor(values: Iterable[float]) -> float:
    """100 if the values look like fractions (all <= 1), else 1: mIoU/IoU are shown in percent."""
    arr = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    return 100.0 if len(arr) and float(arr.abs().max()) <= 1.0 else 1.0


def slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(p)).strip("-") for p in parts if str(p))


def provenance(df: pd.DataFrame) -> dict[str, int]:
    """{study: number of distinct trials} of the rows an artifact was computed from."""
    if df is None or df.empty or "study" not in df or "trial_id" not in df:
        return {}
    return {str(k): int(v) for k, v in df.groupby("study")["trial_id"].nunique().sort_index().items()}


# -- outputs --------------------------------------------------------------------------------

@dataclass
class Artifact:
    key: str
    title: str
    paths: list[Path]
    sources: dict[str, int]
    note: str = ""


@dataclass
class Missing:
    key: str
    title: str
    why: str
    command: str = ""


@dataclass
class Report:
    """What a run of the analysis produced, what it could not make (and why), what failed."""

    out: Path
    written: list[Path] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)  # artifact key -> experiment command
    figure_formats: tuple[str, ...] = ("png", "pdf")
    html_tables: dict[Path, str] = field(default_factory=dict)  # table .csv path -> its HTML (index.html)

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def cache(self) -> Path:
        return self.out / ".cache"

    @property
    def skipped(self) -> list[str]:
        return [f"no data for {m.title}" + (f" ({m.why})" if m.why else "") for m in self.missing]

    def add(self, key: str, title: str, paths: Sequence[Path], used: pd.DataFrame | None = None, note: str = "") -> None:
        self.artifacts.append(Artifact(key, title, list(paths), provenance(used) if used is not None else {}, note))

    def skip(self, key: str, title: str, why: str = "") -> None:
        m = Missing(key, title, why, self.commands.get(key, ""))
        log.info("no data for %s%s", title, f" ({why})" if why else "")
        self.missing.append(m)

    def made(self, key: str) -> bool:
        return any(a.key == key for a in self.artifacts)


def _cell(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """A GitHub Markdown table; cells where ``bold`` is True are wrapped in ``**``."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for i in range(len(df)):
        cells = []
        for j in range(df.shape[1]):
            text = _cell(df.iat[i, j]).replace("|", "\\|")
            if bold is not None and text and bool(bold.iat[i, j]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(df: pd.DataFrame, caption: str = "", bold: pd.DataFrame | None = None) -> str:
    """An HTML ``<table>`` (escaped text, ``<b>`` where ``bold``), cells formatted as in the Markdown,
    after its caption (a ``<p class='caption'>``)."""
    import html

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i in range(len(df)):
        cells = []
        for j in range(df.shape[1]):
            text = html.escape(_cell(df.iat[i, j]))
            if bold is not None and text and bool(bold.iat[i, j]):
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
    return f"{cap}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_latex(df: pd.DataFrame, caption: str = "", bold: pd.DataFrame | None = None, label: str = "") -> str:
    """LaTeX via pandas' Styler (booktabs rules, escaped text, ``\\textbf`` where ``bold``)."""
    shown = df.map(_cell)
    styler = shown.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    if bold is not None:
        styler = styler.apply(lambda _: np.where(bold.to_numpy(bool), "textbf:--rwrap;", ""), axis=None)
    tex = styler.to_latex(caption=caption or None, label=label or None, hrules=True, position="t",
                          position_float="centering", column_format="l" * shown.shape[1])
    return tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def save_table(report: Report, name: str, data: pd.DataFrame, display: pd.DataFrame | None = None,
               caption: str = "", bold: pd.DataFrame | None = None) -> list[Path]:
    """``name``.csv (raw numbers, ``data``), .md and .tex (formatted ``display``, ``bold`` cells)."""
    report.tables.mkdir(parents=True, exist_ok=True)
    display = data if display is None else display
    if bold is not None:
        bold = bold.reindex(index=display.index, columns=display.columns, fill_value=False).fillna(False).astype(bool)
    paths = [report.tables / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    data.to_csv(paths[0], index=False)
    paths[1].write_text((f"**{caption}**\n\n" if caption else "") + to_markdown(display.reset_index(drop=True),
                                                                               None if bold is None else bold.reset_index(drop=True)))
    paths[2].write_text(to_latex(display.reset_index(drop=True), caption,
                                 None if bold is None else bold.reset_index(drop=True), label=f"tab:{name}"))
    report.html_tables[paths[0]] = to_html(display.reset_index(drop=True), caption,
                                           None if bold is None else bold.reset_index(drop=True))
    report.written.extend(paths)
    log.info("wrote table %s", name)
    return paths


# One paper column is ~3.5 in wide, a full text width ~7.1 in.
COLUMN_W, FULL_W = 3.5, 7.1
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": 100, "savefig.dpi": 200,
                     "pdf.fonttype": 42})


def save_figure(report: Report, name: str, fig: plt.Figure) -> list[Path]:
    report.figures.mkdir(parents=True, exist_ok=True)
    paths = [report.figures / f"{name}.{ext}" for ext in report.figure_formats]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    report.written.extend(paths)
    log.info("wrote figure %s", name)
    return paths


def mean_std(values: pd.Series | Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1 (NaN for one value), n) of the finite values."""
    x = pd.to_numeric(pd.Series(list(values) if not isinstance(values, pd.Series) else values),
                      errors="coerce").dropna().to_numpy(np.float64)
    if not len(x):
        return math.nan, math.nan, 0
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) >= 2 else math.nan), len(x)


def pm(mean: float, std: float, n: int | None = None, digits: int = 2) -> str:
    """``"33.85 ± 0.10"``; a single seed prints ``"33.85"``; ``n`` appends ``" (n=3)"``."""
    if (n is not None and n == 0) or mean is None or math.isnan(mean):
        return ""
    text = f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text + (f" (n={n})" if n is not None else "")
