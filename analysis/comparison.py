"""Method comparison (paper Tables II/III) from the ``compare_methods`` study.

Table II, per dataset: the teacher, then for each student architecture the CE-only baseline and
every distillation method found in the data (known methods in a fixed order, unknown ones after),
with params, FLOPs at 512x512 and mIoU as mean ± std over seeds; the best student mIoU of each
student block is bold. Table III: the same methods for each student across datasets (one mIoU
column per dataset, best per column bold). Every difference to the baseline is tested against
seed noise (Welch's t-test, ``segdistill.summary``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from segdistill.summary import summarize

from .common import (
    DATASET,
    METRIC,
    STUDENT,
    Report,
    Results,
    arch_label,
    dedupe_teachers,
    from_experiment,
    main_runs,
    method_colour,
    method_sort_key,
    ordered_methods,
    percent_factor,
    plt,
    pm,
    save_figure,
    save_table,
    slug,
    students_of,
    teachers_for,
)

SCRIPT = "compare_methods"


def comparison_runs(res: Results) -> pd.DataFrame:
    """Trials of the ``compare_methods`` study (group "comparison"); without one, every student
    run outside ablations and searches (e.g. ``class_analysis``) and their teachers."""
    t = from_experiment(res.trials, SCRIPT, ("comparison",))
    if students_of(t).empty:
        t = main_runs(res.trials)
    return t


def method_table(res: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, trial rows used). Raw numbers, one row per (dataset, model, method): n, mean, std (ddof=1) of ``METRIC`` (catalog.REPORTED_METRIC)
    over seeds, params, flops, the difference to the same student's baseline with Welch's p and
    verdict, and ``best`` (True for the highest student mean of each (dataset, model) block)."""
    t = comparison_runs(res)
    if t.empty or METRIC not in t or DATASET not in t or STUDENT not in t:
        return pd.DataFrame(), t
    t = t.copy()
    t[METRIC] = pd.to_numeric(t[METRIC], errors="coerce")
    by = [DATASET, STUDENT, "method_label"]
    students = students_of(t)
    parts, teachers = [], pd.DataFrame()
    if not students.empty:
        parts.append(summarize(students, by, METRIC, reference={"method_label": "baseline"}))
        teachers = pd.concat([teachers_for(t, students[students[DATASET] == ds], ds, pool=res.trials)
                              for ds in sorted(students[DATASET].astype(str).unique())])
        teachers = dedupe_teachers(teachers)
        if not teachers.empty:
            parts.append(summarize(teachers, by, METRIC))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(), t
    table = pd.concat(parts, ignore_index=True)
    used = pd.concat([students, teachers]) if not students.empty else t
    for extra in ("params", "flops"):
        if extra in used:
            means = used.assign(**{extra: pd.to_numeric(used[extra], errors="coerce")}).groupby(by)[extra].mean()
            table[extra] = [means.get(k, math.nan) for k in zip(*(table[c] for c in by))]
        else:
            table[extra] = math.nan
    table = table.rename(columns={DATASET: "dataset", STUDENT: "model", "method_label": "method",
                                  "diff": "diff_vs_baseline"})
    table["_t"] = (table["method"] != "teacher").astype(int)
    table["_m"] = [method_sort_key(m) for m in table["method"]]
    table = table.sort_values(["dataset", "_t", "model", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)
    is_student = table["method"] != "teacher"
    best = table[is_student].groupby(["dataset", "model"])["mean"].transform("max")
    table["best"] = False
    table.loc[is_student, "best"] = np.isclose(table.loc[is_student, "mean"], best) & table.loc[is_student, "mean"].notna()
    keep = ["dataset", "model", "method", "n", "mean", "std", "params", "flops", "diff_vs_baseline", "p_value",
            "verdict", "best"]
    return table[[c for c in keep if c in table]], used


def _unit(v: float, scale: float, suffix: str) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(v) else f"{v / scale:.1f}{suffix}"


def table2(res: Results, report: Report) -> None:
    """Paper Table II: one table per dataset, methods x students."""
    data, used = method_table(res)
    title = "Table II: methods x students (one dataset)"
    if data.empty:
        report.skip("table2", title, f"no completed compare_methods student trials with {METRIC}")
        return
    f = percent_factor(data["mean"])
    for dataset, d in data.groupby("dataset", sort=True):
        d = d.reset_index(drop=True)
        is_t = d["method"] == "teacher"
        display = pd.DataFrame({
            "Method": [("T: " if m == "teacher" else "S: ") + arch_label(a) if m in ("teacher", "baseline") else f"+{m}"
                       for a, m in zip(d["model"], d["method"])],
            "Params": [_unit(v, 1e6, "M") for v in d["params"]],
            "FLOPs": [_unit(v, 1e9, "G") for v in d["flops"]],
            "mIoU (%)" if f == 100 else "mIoU": [pm(m * f, s * f) for m, s in zip(d["mean"], d["std"])],
            "Δ baseline": ["" if pd.isna(x) or m in ("teacher", "baseline") else f"{x * f:+.2f}"
                           for x, m in zip(d["diff_vs_baseline"], d["method"])],
            "seeds": d["n"].astype(int),
            "vs seed noise": ["" if m in ("teacher", "baseline") else str(v)
                              for v, m in zip(d["verdict"].fillna(""), d["method"])],
        })
        bold = pd.DataFrame(False, index=display.index, columns=display.columns)
        bold[display.columns[3]] = d["best"].to_numpy(bool) & ~is_t.to_numpy()
        name = slug("table2_methods", dataset)
        paths = save_table(report, name, d, display, bold=bold,
                           caption=f"Table II on {dataset}: mIoU mean ± std over seeds (best per student in bold); "
                                   f"FLOPs at 512x512")
        report.add("table2", f"Table II ({dataset})", paths, used[used[DATASET].astype(str) == str(dataset)])


def table3(res: Results, report: Report) -> None:
    """Paper Table III: for each student, the methods across datasets (needs >= 2 datasets)."""
    data, used = method_table(res)
    title = "Table III: methods across datasets"
    if data.empty:
        report.skip("table3", title, f"no completed compare_methods student trials with {METRIC}")
        return
    made = False
    f = percent_factor(data["mean"])
    students = data[data["method"] != "teacher"]
    for model, s in students.groupby("model", sort=True):
        datasets = sorted(s["dataset"].unique())
        if len(datasets) < 2:
            continue
        rows = pd.concat([data[(data["method"] == "teacher") & data["dataset"].isin(datasets)], s])
        methods = ["teacher"] + [m for m in ordered_methods(s["method"]) if m != "teacher"]
        raw = rows.pivot_table(index="method", columns="dataset", values=["mean", "std", "n"], aggfunc="first")
        raw = raw.reindex([m for m in methods if m in raw.index])
        wide = pd.DataFrame({"method": raw.index})
        t_archs = sorted(set(used[(used["method_label"] == "teacher") & used[DATASET].astype(str).isin(datasets)]
                             [STUDENT].astype(str)))
        t_name = "T: " + (arch_label(t_archs[0]) if len(t_archs) == 1 else "teacher")
        display = pd.DataFrame({"Method": [(t_name if m == "teacher" else
                                            "S: " + arch_label(model) if m == "baseline" else f"+{m}")
                                           for m in raw.index]})
        bold = pd.DataFrame(False, index=display.index, columns=["Method", *datasets])
        for ds in datasets:
            mean, std, n = raw[("mean", ds)], raw[("std", ds)], raw[("n", ds)]
            wide[f"{ds}_mean"], wide[f"{ds}_std"], wide[f"{ds}_n"] = mean.to_numpy(), std.to_numpy(), n.to_numpy()
            display[ds] = [pm(m * f, sd * f) for m, sd in zip(mean, std)]
            student_means = mean.where(mean.index != "teacher")
            bold[ds] = (np.isclose(mean.to_numpy(float), np.nanmax(student_means.to_numpy(float)))
                        & (mean.index != "teacher")).tolist()
            wide[f"{ds}_best"] = bold[ds].to_numpy()
        name = slug("table3_methods_across_datasets", model)
        paths = save_table(report, name, wide, display, bold=bold,
                           caption=f"Table III: {arch_label(model)} students across datasets, mIoU (%) mean ± std "
                                   "over seeds (best per dataset in bold)")
        report.add("table3", f"Table III ({arch_label(model)})", paths,
                   used[used[DATASET].astype(str).isin(datasets)])
        made = True
    if not made:
        report.skip("table3", title, "compare_methods results cover only one dataset "
                    f"({', '.join(sorted(map(str, data['dataset'].unique())))})")


def fig_methods(res: Results, report: Report) -> None:
    """Beyond the paper: mIoU per method and student with the seed spread (mean ± std, each seed as
    a dot), one panel per dataset; the teacher as a dotted line."""
    data, used = method_table(res)
    if data.empty:
        report.skip("fig_methods", "method comparison figure", "no completed compare_methods student trials")
        return
    f = percent_factor(data["mean"])
    for dataset, d in data.groupby("dataset", sort=True):
        st = d[d["method"] != "teacher"]
        models = sorted(st["model"].unique())
        methods = ordered_methods(st["method"])
        fig, axes = plt.subplots(1, len(models), figsize=(max(3.5, 0.42 * len(methods) * len(models) + 1.2), 2.6),
                                 squeeze=False, sharey=True)
        for ax, model in zip(axes[0], models):
            g = st[st["model"] == model].set_index("method")
            x = np.arange(len(methods))
            for i, m in enumerate(methods):
                if m not in g.index:
                    continue
                ax.bar(i, g.loc[m, "mean"] * f, 0.7, color=method_colour(m),
                       yerr=(0 if pd.isna(g.loc[m, "std"]) else g.loc[m, "std"] * f), capsize=2,
                       edgecolor="black" if g.loc[m, "best"] else "none", linewidth=1.0)
                seeds = used[(used[DATASET].astype(str) == str(dataset)) & (used[STUDENT] == model)
                             & (used["method_label"] == m)]
                ax.scatter(np.full(len(seeds), i), seeds[METRIC].astype(float) * f, s=6, color="black", zorder=3)
            teacher = d[(d["method"] == "teacher")]
            if not teacher.empty:
                ax.axhline(teacher["mean"].max() * f, color=method_colour("teacher"), linestyle=":",
                           label="teacher")
                ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.98))  # above the bars, below the line
            lo = np.nanmin(st["mean"] - st["std"].fillna(0)) * f
            ax.set_ylim(max(0.0, lo - 0.1 * abs(lo) - 1), None)
            ax.set_xticks(x, methods, rotation=45, ha="right")
            ax.set_title(arch_label(model))
            ax.grid(axis="y", alpha=0.3)
        axes[0, 0].set_ylabel("mIoU (%)" if f == 100 else "mIoU")
        fig.suptitle(f"Methods on {dataset}: mean ± std over seeds, dots = seeds", fontsize=8.5)
        fig.tight_layout()
        paths = save_figure(report, slug("fig_methods", dataset), fig)
        report.add("fig_methods", f"method comparison with seed spread ({dataset})", paths,
                   used[used[DATASET].astype(str) == str(dataset)])
