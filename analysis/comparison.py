"""Method comparison (paper Tables II/III): method x student x dataset, mean +/- std over seeds,
params and FLOPs, the difference to the same student's baseline and whether it exceeds seed noise."""

from __future__ import annotations

import math

import pandas as pd

from segdistill.summary import summarize

from .common import DATASET, METRIC, STUDENT, Report, Results, main_runs, method_sort_key, percent_factor, pm, save_table


def method_table(res: Results) -> pd.DataFrame:
    """Raw numbers: dataset, model, method, n, mean, std, params, flops, diff_vs_baseline, p_value, verdict."""
    t = main_runs(res.trials)
    if t.empty or METRIC not in t or DATASET not in t or STUDENT not in t:
        return pd.DataFrame()
    t = t.copy()
    t[METRIC] = pd.to_numeric(t[METRIC], errors="coerce")
    by = [DATASET, STUDENT, "method_label"]
    students, teachers = t[t["method_label"] != "teacher"], t[t["method_label"] == "teacher"]
    parts = []
    if not students.empty:
        parts.append(summarize(students, by, METRIC, reference={"method_label": "baseline"}))
    if not teachers.empty:
        parts.append(summarize(teachers, by, METRIC))
    table = pd.concat([p for p in parts if not p.empty], ignore_index=True) if parts else pd.DataFrame()
    if table.empty:
        return table
    for extra in ("params", "flops"):
        if extra in t:
            means = t.assign(**{extra: pd.to_numeric(t[extra], errors="coerce")}).groupby(by, dropna=False)[extra].mean()
            table[extra] = [means.get(k, math.nan) for k in zip(*(table[c] for c in by))]
        else:
            table[extra] = math.nan
    table = table.rename(columns={DATASET: "dataset", STUDENT: "model", "method_label": "method", "diff": "diff_vs_baseline"})
    table["_t"] = (table["method"] != "teacher").astype(int)
    table["_m"] = [method_sort_key(m) for m in table["method"]]
    table = table.sort_values(["dataset", "_t", "model", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)
    keep = ["dataset", "model", "method", "n", "mean", "std", "params", "flops", "diff_vs_baseline", "p_value", "verdict"]
    return table[[c for c in keep if c in table]]


def table_methods(res: Results, report: Report) -> None:
    data = method_table(res)
    if data.empty:
        report.skip("Tables II/III method comparison", "needs completed trials with best_miou")
        return
    f = percent_factor(data["mean"])
    display = pd.DataFrame({
        "dataset": data["dataset"],
        "model": [("T: " if m == "teacher" else "S: ") + str(a) for a, m in zip(data["model"], data["method"])],
        "method": ["" if m in ("teacher", "baseline") else f"+{m}" for m in data["method"]],
        "params": [_unit(v, 1e6, "M") for v in data["params"]],
        "FLOPs": [_unit(v, 1e9, "G") for v in data["flops"]],
        "mIoU (%)" if f == 100 else "mIoU": [pm(m * f, s * f, n) for m, s, n in zip(data["mean"], data["std"], data["n"])],
        "diff vs baseline": ["" if pd.isna(d) or m in ("teacher", "baseline") else f"{d * f:+.2f}"
                             for d, m in zip(data.get("diff_vs_baseline", pd.Series(math.nan, index=data.index)),
                                             data["method"])],
        "verdict": ["" if m in ("teacher", "baseline") else v for v, m in
                    zip(data.get("verdict", pd.Series("", index=data.index)).fillna(""), data["method"])],
    })
    save_table(report, "table_methods", data, display,
               caption="Method comparison (paper Tables II/III): mean +/- std over seeds; FLOPs at 512x512")


def _unit(v: float, scale: float, suffix: str) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(v) else f"{v / scale:.1f}{suffix}"
