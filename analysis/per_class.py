"""Per-class views from the ``class_analysis`` study: TD/NTD of a CWD student (paper Table I),
per-class IoU of baseline / CWD / HWD / teacher (paper Fig. 2) and, beyond the paper, HWD minus
CWD per class against the class's pixel frequency.

Classes whose IoU is undefined in every run (never labelled and never predicted: mmseg's empty
union) are left out of every table and figure, as they are out of the mIoU; a class predicted but
never labelled (IoU 0, counted in the mIoU since results schema 2) stays.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .common import (
    COLUMN_W,
    DATASET,
    FULL_W,
    STUDENT,
    Report,
    Results,
    from_experiment,
    main_runs,
    method_colour,
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

SCRIPT = "class_analysis"
FIG2_LABELS = ("baseline", "CWD", "HWD", "teacher")
MAX_CLASSES_PER_ROW = 30


def class_runs(res: Results) -> pd.DataFrame:
    """per_class rows of the ``class_analysis`` study; without one, of every non-ablation study."""
    df = from_experiment(res.per_class, SCRIPT, ("class_analysis",))
    if students_of(df).empty:
        df = main_runs(res.per_class)
    return df


def occurring(df: pd.DataFrame) -> pd.DataFrame:
    """Drop classes whose IoU is undefined in every run (neither labelled nor predicted)."""
    if df.empty:
        return df
    occurs = pd.Series(False, index=df.index)
    if "pixels" in df:
        occurs |= pd.to_numeric(df["pixels"], errors="coerce").fillna(0) > 0
    if "present" in df:
        occurs |= df["present"].fillna(False).astype(bool)
    if "iou" in df:  # mmseg: a class predicted but never labelled has IoU 0 and counts
        occurs |= pd.to_numeric(df["iou"], errors="coerce").notna()
    keep = occurs.groupby(df["class_id"]).transform("any")
    return df[keep]


def pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    st = students_of(df)
    if st.empty or DATASET not in st or STUDENT not in st:
        return []
    return sorted(set(zip(st[DATASET].astype(str), st[STUDENT].astype(str))))


def pair_rows(res: Results, df: pd.DataFrame, dataset: str, student: str) -> pd.DataFrame:
    """The students of (dataset, student) plus their teacher, occurring classes only."""
    st = students_of(df)
    st = st[(st[DATASET].astype(str) == dataset) & (st[STUDENT].astype(str) == student)]
    rows = pd.concat([st, teachers_for(df, st, dataset, pool=res.per_class)])
    return occurring(rows)


def class_stats(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """Long frame: class_id, class_name, method, n (trials), mean, std (ddof=1) of ``value``;
    plus each class's mean pixel count."""
    if rows.empty:
        return pd.DataFrame(columns=["class_id", "class_name", "method", "n", "mean", "std", "pixels"])
    v = rows.assign(_v=pd.to_numeric(rows[value], errors="coerce"))
    g = v.groupby(["class_id", "class_name", "method_label"])["_v"]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "std": g.std(ddof=1)}).reset_index()
    out = out.rename(columns={"method_label": "method"})
    pixels = pd.to_numeric(rows["pixels"], errors="coerce").groupby(rows["class_id"]).mean() if "pixels" in rows else None
    out["pixels"] = out["class_id"].map(pixels) if pixels is not None else np.nan
    return out


def _wide(stats: pd.DataFrame, what: str, methods: list[str]) -> pd.DataFrame:
    w = stats.set_index(["class_id", "class_name", "method"])[what].unstack("method")
    return w.reindex(columns=[m for m in methods if m in w.columns])


# -- Table I ------------------------------------------------------------------------------------

def td_ntd_table(res: Results, dataset: str, student: str, method: str = "CWD") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per occurring class of ``method``'s students: mean TD, mean NTD and TD/NTD as mean ± std
    over seeds of each run's own ratio (TD/NTD from the ``per_class`` table); and the rows used."""
    rows = pair_rows(res, class_runs(res), dataset, student)
    rows = rows[(rows["method_label"] == method) & rows["td_ntd"].notna()] if not rows.empty else rows
    if rows.empty:
        return pd.DataFrame(), rows
    out = []
    for (cid, name), g in rows.groupby(["class_id", "class_name"]):
        r = pd.to_numeric(g["td_ntd"], errors="coerce").dropna()
        out.append({"class_id": int(cid), "class_name": name, "td": float(g["td"].mean()), "ntd": float(g["ntd"].mean()),
                    "td_ntd_mean": float(r.mean()), "td_ntd_std": float(r.std(ddof=1)) if len(r) >= 2 else math.nan,
                    "n": int(r.count()), "pixels": float(pd.to_numeric(g["pixels"], errors="coerce").mean())})
    return pd.DataFrame(out).sort_values("class_id").reset_index(drop=True), rows


def table1_td_ntd(res: Results, report: Report) -> None:
    """Paper Table I: TD, NTD and TD/NTD per class for the CWD-trained student."""
    made = False
    df = class_runs(res)
    if not df.empty and "td_ntd" in df:
        for dataset, student in pairs(df[df["td_ntd"].notna()]):
            table, used = td_ntd_table(res, dataset, student)
            if table.empty:
                continue
            display = pd.DataFrame({
                "class": table["class_name"],
                "TD": [f"{v:.3g}" for v in table["td"]],
                "NTD": [f"{v:.3g}" for v in table["ntd"]],
                "TD/NTD": [pm(m, s, digits=1) for m, s in zip(table["td_ntd_mean"], table["td_ntd_std"])],
                "seeds": table["n"],
            })
            name = slug("table1_td_ntd", dataset, student)
            paths = save_table(report, name, table, display,
                               caption=f"Table I: TD/NTD per class of the CWD student ({dataset}, {student}); "
                                       "mean ± std over seeds; classes absent from the labels left out")
            report.add("table1", f"Table I ({dataset}, {student})", paths, used)
            made = True
    if not made:
        report.skip("table1", "Table I: TD/NTD per class", "no CWD student with per-class TD/NTD "
                    "in class_analysis (or any non-ablation study)")


# -- Fig. 2 -------------------------------------------------------------------------------------

def iou_table(res: Results, dataset: str, student: str, labels: tuple[str, ...] | None = FIG2_LABELS
              ) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """(wide table: class_id, class_name, pixels, <method> (mean over seeds), <method>_std (ddof=1),
    <method>_n; the methods in order; the rows used)."""
    rows = pair_rows(res, class_runs(res), dataset, student)
    if labels is not None and not rows.empty:
        rows = rows[rows["method_label"].isin(labels)]
    stats = class_stats(rows, "iou")
    if stats.empty:
        return pd.DataFrame(), [], rows
    methods = ordered_methods(stats["method"])
    mean, std, n = (_wide(stats, k, methods) for k in ("mean", "std", "n"))
    wide = mean.copy()
    for m in mean.columns:
        wide[f"{m}_std"] = std[m]
        wide[f"{m}_n"] = n[m]
    wide = wide.reset_index()
    wide.insert(2, "pixels", wide["class_id"].map(stats.groupby("class_id")["pixels"].first()))
    return wide, list(mean.columns), rows


def fig2_per_class_iou(res: Results, report: Report, *, sort_by: str = "pixels") -> None:
    """Paper Fig. 2: per-class IoU of baseline, CWD, HWD and the teacher (mean ± std over seeds),
    classes sorted by pixel frequency (``sort_by="pixels"``) or by teacher IoU (``"teacher"``)."""
    made = False
    df = class_runs(res)
    for dataset, student in pairs(df) if not df.empty else []:
        table, methods, rows = iou_table(res, dataset, student)
        if not [m for m in methods if m != "teacher"]:
            continue
        key = sort_by if sort_by in table else "pixels"
        table = table.sort_values([key, "class_id"], ascending=[False, True]).reset_index(drop=True)
        f = percent_factor(table[methods].to_numpy().ravel())
        display = pd.DataFrame({"class": table["class_name"],
                                "pixels": table["pixels"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")})
        for m in methods:
            display[m] = [pm(a * f, s * f) for a, s in zip(table[m], table[f"{m}_std"])]
        name = slug("fig2_per_class_iou", dataset, student)
        seeds = ", ".join(f"{m}: {int(table[f'{m}_n'].max())}" for m in methods)
        paths = save_table(report, name, table, display,
                           caption=f"Per-class IoU (%) on {dataset}, student {student}: mean ± std over seeds "
                                   f"({seeds}); classes by pixel frequency")
        chunks = [table.iloc[i:i + MAX_CLASSES_PER_ROW] for i in range(0, len(table), MAX_CLASSES_PER_ROW)]
        per_row = min(len(table), MAX_CLASSES_PER_ROW)
        width = FULL_W if per_row > 10 else max(COLUMN_W, 0.35 * per_row * len(methods) / 2 + 1)
        fig, axes = plt.subplots(len(chunks), 1, figsize=(width, 2.3 * len(chunks) + 0.3), squeeze=False)
        bw = 0.8 / len(methods)
        for ax, chunk in zip(axes[:, 0], chunks):
            x = np.arange(len(chunk))
            for i, m in enumerate(methods):
                ax.bar(x + (i - (len(methods) - 1) / 2) * bw, chunk[m] * f, bw, color=method_colour(m),
                       yerr=chunk[f"{m}_std"].fillna(0) * f, error_kw={"elinewidth": 0.6, "capsize": 0},
                       label=f"{m} (n={int(table[f'{m}_n'].max())})")
            ax.set_xticks(x, chunk["class_name"].astype(str), rotation=60, ha="right", rotation_mode="anchor")
            ax.set_xlim(-0.6, per_row - 0.4)
            ax.set_ylabel("IoU (%)" if f == 100 else "IoU")
            ax.grid(axis="y", alpha=0.3)
        axes[0, 0].legend(ncol=len(methods), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
        fig.suptitle(f"Per-class IoU, {dataset}, student {student} (classes by pixel frequency; "
                     "bars: mean ± std over seeds)", fontsize=8, y=1.0)
        fig.tight_layout()
        paths += save_figure(report, name, fig)
        report.add("fig2", f"Fig. 2 per-class IoU ({dataset}, {student})", paths, rows)
        made = True
    if not made:
        report.skip("fig2", "Fig. 2 per-class IoU", "no per-class IoU of baseline/CWD/HWD students")


# -- HWD minus CWD vs class frequency --------------------------------------------------------

def hwd_minus_cwd(res: Results, dataset: str, student: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per occurring class: pixel frequency (share of labelled val pixels), mean IoU of HWD and CWD
    over seeds, their difference and its standard error sqrt(s_H^2/n_H + s_C^2/n_C); the rows used."""
    table, methods, rows = iou_table(res, dataset, student, labels=("CWD", "HWD"))
    if table.empty or not {"CWD", "HWD"} <= set(methods):
        return pd.DataFrame(), rows
    out = table[["class_id", "class_name", "pixels"]].copy()
    out["frequency"] = out["pixels"] / out["pixels"].sum()
    out["hwd"], out["cwd"] = table["HWD"], table["CWD"]
    out["diff"] = table["HWD"] - table["CWD"]
    out["se"] = np.sqrt(table["HWD_std"] ** 2 / table["HWD_n"] + table["CWD_std"] ** 2 / table["CWD_n"])
    out["n_hwd"], out["n_cwd"] = table["HWD_n"], table["CWD_n"]
    return out.sort_values("frequency", ascending=False).reset_index(drop=True), rows


def place_labels(ax, x: np.ndarray, y: np.ndarray, texts: list[str], fontsize: float = 5.5) -> None:
    """Annotate points without overlaps: each label takes the first of a few offsets whose box
    overlaps no label placed before it (drawn to measure; the last offset is used if all collide)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(3, 3), (3, -8), (-3, 3), (-3, -8), (4, 10), (4, -15), (-4, 10), (-4, -15), (8, 17), (8, -22)]
    for i in np.argsort(x):
        for dx, dy in offsets:
            ann = ax.annotate(texts[i], (x[i], y[i]), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                              ha="left" if dx >= 0 else "right", color="#333333")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            ann.remove()


def fig_hwd_minus_cwd(res: Results, report: Report, *, label_at_most: int = 30) -> None:
    made = False
    df = class_runs(res)
    for dataset, student in pairs(df) if not df.empty else []:
        d, used = hwd_minus_cwd(res, dataset, student)
        if d.empty:
            continue
        f = percent_factor(pd.concat([d["hwd"], d["cwd"]]))
        fig, ax = plt.subplots(figsize=(COLUMN_W + 0.8, 2.8))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.errorbar(d["frequency"], d["diff"] * f, yerr=d["se"].fillna(0) * f, fmt="o", ms=3.5, color="#d62728",
                    ecolor="#d62728", elinewidth=0.7, capsize=1.5)
        if len(d) > label_at_most:  # label the extremes only
            extreme = pd.concat([d.nlargest(label_at_most // 2, "diff"), d.nsmallest(label_at_most // 2, "diff")])
        else:
            extreme = d
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g}%"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        place_labels(ax, extreme["frequency"].to_numpy(float), (extreme["diff"] * f).to_numpy(float),
                     extreme["class_name"].astype(str).tolist())
        ax.set_xlabel("class share of the labelled validation pixels (log scale)")
        ax.set_ylabel("IoU(HWD) − IoU(CWD) (points)" if f == 100 else "IoU(HWD) − IoU(CWD)")
        ok = len(d) > 2 and d["diff"].std() > 0 and d["frequency"].std() > 0
        r = np.corrcoef(np.log(d["frequency"].clip(lower=1e-12)), d["diff"])[0, 1] if ok else math.nan
        ax.set_title(f"HWD − CWD per class, {dataset}, {student}: mean ± SE over seeds\n"
                     f"(Pearson r with log frequency = {r:.2f})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = slug("fig_hwd_minus_cwd", dataset, student)
        paths = save_figure(report, name, fig)
        paths += save_table(report, name, d, pd.DataFrame({
            "class": d["class_name"], "frequency": d["frequency"].map(lambda v: f"{v:.4f}"),
            "HWD − CWD": [pm(a * f, s * f) for a, s in zip(d["diff"], d["se"])]}),
            caption=f"HWD − CWD IoU per class ({dataset}, {student}), ± standard error over seeds")
        report.add("fig_hwd_minus_cwd", f"HWD − CWD per class vs frequency ({dataset}, {student})", paths,
                   used)
        made = True
    if not made:
        report.skip("fig_hwd_minus_cwd", "HWD − CWD per class vs class frequency",
                    "needs per-class IoU of both CWD and HWD students")
