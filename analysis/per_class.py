"""Per-class views: IoU of baseline / CWD / HWD / teacher (paper Fig. 2) and TD/NTD (Table I)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import (DATASET, STUDENT, TEACHER_ARCH, Report, Results, main_runs, method_sort_key,
                     percent_factor, plt, save_figure, save_table, slug)

FIG2_LABELS = ("baseline", "CWD", "HWD", "teacher")


def _pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    students = df[df["method_label"] != "teacher"]
    if students.empty or DATASET not in students or STUDENT not in students:
        return []
    return sorted(set(zip(students[DATASET].astype(str), students[STUDENT].astype(str))))


def _teacher_rows(df: pd.DataFrame, students: pd.DataFrame, dataset: str) -> pd.DataFrame:
    teachers = df[(df["method_label"] == "teacher") & (df[DATASET].astype(str) == dataset)]
    if TEACHER_ARCH in students:
        archs = set(students[TEACHER_ARCH].dropna().astype(str)) - {""}
        matching = teachers[teachers[STUDENT].astype(str).isin(archs)]
        if not matching.empty:
            return matching
    return teachers


def per_class_frame(res: Results, dataset: str, student: str, value: str,
                    labels: tuple[str, ...] | None = FIG2_LABELS) -> tuple[pd.DataFrame, dict[str, int]]:
    """Mean of ``value`` per class (rows) and method label (columns), plus seeds per label."""
    df = main_runs(res.per_class)
    students = df[(df["method_label"] != "teacher") & (df[DATASET].astype(str) == dataset) & (df[STUDENT].astype(str) == student)]
    rows = pd.concat([students, _teacher_rows(df, students, dataset)])
    if labels is not None:
        rows = rows[rows["method_label"].isin(labels)]
    if rows.empty:
        return pd.DataFrame(), {}
    table = rows.pivot_table(index=["class_id", "class_name"], columns="method_label", values=value, aggfunc="mean")
    order = sorted(table.columns, key=method_sort_key)
    order = [c for c in order if c != "teacher"] + (["teacher"] if "teacher" in order else [])
    n = {lab: int(rows[rows["method_label"] == lab]["trial_id"].nunique()) for lab in order}
    return table[order].reset_index().sort_values("class_id").reset_index(drop=True), n


def fig2_per_class_iou(res: Results, report: Report) -> None:
    """Paper Fig. 2: per-class IoU of baseline, CWD, HWD and the teacher, per (dataset, student)."""
    pairs = _pairs(res.per_class) if not res.per_class.empty else []
    made = False
    for dataset, student in pairs:
        table, n = per_class_frame(res, dataset, student, "iou")
        if table.empty or not (set(n) - {"teacher"}):
            continue
        labels = [c for c in table.columns if c not in ("class_id", "class_name")]
        f = percent_factor(table[labels].to_numpy().ravel())
        name = slug("fig2_per_class_iou", dataset, student)
        display = table.copy()
        for lab in labels:
            display[lab] = display[lab].map(lambda v: "" if pd.isna(v) else f"{v * f:.2f}")
        display.columns = ["class_id", "class", *[f"{lab} (n={n[lab]})" for lab in labels]]
        save_table(report, name, table, display,
                   caption=f"Per-class IoU (%), {dataset}, student {student}; mean over seeds")
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(table) + 2), 3.6))
        width = 0.8 / len(labels)
        x = np.arange(len(table))
        for i, lab in enumerate(labels):
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, table[lab] * f, width, label=f"{lab} (n={n[lab]})")
        ax.set_xticks(x, table["class_name"].astype(str), rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)" if f == 100 else "IoU")
        ax.set_title(f"Per-class IoU on {dataset}: student {student}")
        ax.legend(fontsize=8, ncol=len(labels))
        ax.grid(axis="y", alpha=0.3)
        save_figure(report, name, fig)
        made = True
    if not made:
        report.skip("Fig. 2 per-class IoU", "needs per_class rows of baseline/CWD/HWD students")


def table1_td_ntd(res: Results, report: Report) -> None:
    """Paper Table I: TD/NTD per class (CWD student first; other methods alongside when logged)."""
    df = res.per_class
    made = False
    if not df.empty and "td_ntd" in df and df["td_ntd"].notna().any():
        for dataset, student in _pairs(df[df["td_ntd"].notna()]):
            table, n = per_class_frame(res, dataset, student, "td_ntd", labels=None)
            labels = [c for c in table.columns if c not in ("class_id", "class_name", "teacher")]
            if table.empty or not labels:
                continue
            labels = (["CWD"] if "CWD" in labels else []) + [c for c in labels if c != "CWD"]
            table = table[["class_id", "class_name", *labels]]
            display = table.copy()
            for lab in labels:
                display[lab] = display[lab].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
            display.columns = ["class_id", "class", *[f"{lab} (n={n[lab]})" for lab in labels]]
            save_table(report, slug("table1_td_ntd", dataset, student), table, display,
                       caption=f"TD/NTD per class, {dataset}, student {student}; mean over seeds")
            made = True
    if not made:
        report.skip("Table I TD/NTD", "needs per_class td/ntd values")
