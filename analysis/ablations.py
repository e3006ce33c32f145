"""Ablations: the smoothing function (Fig. 3, analytic), beta vs softmax-tau' (Fig. 6), mu (Fig. 7)
and the pixel-count correction (paper "n" vs released code "none")."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from segdistill.summary import compare_samples

from .common import (BETA, DATASET, METHOD, METRIC, MU, PIXEL, STUDENT, TAU_PRIME, WEIGHTING, Report, Results,
                     by_group, col, mean_std, percent_factor, plt, pm, save_figure, save_table, slug)

FIG3_BETAS = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)


def smoothing(w: np.ndarray, beta: float) -> np.ndarray:
    """The smoothing inside HWD's softmax (paper Eq. 7 / Fig. 3): exp((1 - beta^w) / (1 - beta))."""
    return np.exp((1.0 - np.power(beta, w)) / (1.0 - beta))


def fig3_smoothing(report: Report, betas: tuple[float, ...] = FIG3_BETAS) -> None:
    """Paper Fig. 3: exp((1 - beta^w)/(1 - beta)) for w in [0, 1]; beside it the exponent
    (1 - beta^w)/(1 - beta) over [-2, 2] (about 95% of normalised weights), where negative w is
    pushed towards -inf for small beta (those channels are ignored). Needs no data."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    w01, w22 = np.linspace(0.0, 1.0, 201), np.linspace(-2.0, 2.0, 401)
    for beta in betas:
        axes[0].plot(w01, smoothing(w01, beta), label=f"beta={beta:g}")
        axes[1].plot(w22, (1.0 - np.power(beta, w22)) / (1.0 - beta), label=f"beta={beta:g}")
    axes[0].set_ylabel("exp((1 - beta^w) / (1 - beta))")
    axes[0].set_title("paper Fig. 3: w in [0, 1]", fontsize=9)
    axes[1].set_ylabel("(1 - beta^w) / (1 - beta)")
    axes[1].set_ylim(-6.0, 2.5)
    axes[1].set_title("exponent, w in [-2, 2] (clipped)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("normalised weight w")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("HWD smoothing function (Eq. 7)")
    fig.tight_layout()
    save_figure(report, "fig3_smoothing", fig)


def _students(res: Results) -> pd.DataFrame:
    t = res.trials
    return t[t["method_label"] != "teacher"] if not t.empty else t


def _points(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean/std/n of the metric per value of ``x`` (sorted)."""
    rows = []
    for value, g in df.groupby(x):
        mean, std, n = mean_std(g[METRIC])
        rows.append({"value": float(value), "n": n, "mean": mean, "std": std, "values": g[METRIC].to_numpy(float)})
    return pd.DataFrame(rows, columns=["value", "n", "mean", "std", "values"])


def _pair_of(df: pd.DataFrame) -> list[tuple[str, str]]:
    if df.empty:
        return []
    return sorted(set(zip(col(df, DATASET, "").astype(str), col(df, STUDENT, "").astype(str))))


def _in_pair(df: pd.DataFrame, dataset: str, student: str) -> pd.DataFrame:
    if df.empty:
        return df
    return df[(col(df, DATASET, "").astype(str) == dataset) & (col(df, STUDENT, "").astype(str) == student)]


def _cwd_reference(students: pd.DataFrame, dataset: str, student: str) -> np.ndarray:
    cwd = by_group(students, "cwd_ref", col(students, METHOD, "") == "cwd")
    cwd = cwd[col(cwd, METHOD, "") == "cwd"]
    return pd.to_numeric(_in_pair(cwd, dataset, student)[METRIC], errors="coerce").dropna().to_numpy(float)


def _series_table(series: dict[str, tuple[str, pd.DataFrame]], cwd: np.ndarray, f: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for name, (param, pts) in series.items():
        for r in pts.itertuples(index=False):
            cmp = compare_samples(r.values, cwd)
            rows.append({"series": name, "param": param, "value": r.value, "n": r.n, "mean": r.mean, "std": r.std,
                         "diff_vs_cwd": cmp["diff"], "p_value": cmp["p_value"], "verdict": cmp["verdict"]})
    if len(cwd):
        mean, std, n = mean_std(pd.Series(cwd))
        rows.append({"series": "CWD", "param": "", "value": math.nan, "n": n, "mean": mean, "std": std,
                     "diff_vs_cwd": 0.0, "p_value": math.nan, "verdict": "reference"})
    data = pd.DataFrame(rows)
    display = pd.DataFrame({
        "setting": [s if not p else f"{p}={v:g}" for s, p, v in zip(data["series"], data["param"], data["value"])],
        "mIoU": [pm(m * f, s * f, n) for m, s, n in zip(data["mean"], data["std"], data["n"])],
        "diff vs CWD": ["" if pd.isna(d) else f"{d * f:+.2f}" for d in data["diff_vs_cwd"]],
        "verdict": data["verdict"],
    })
    return data, display


def _plot_series(ax, pts: pd.DataFrame, f: float, label: str, marker: str) -> None:
    ax.errorbar(pts["value"], pts["mean"] * f, yerr=(pts["std"].fillna(0.0) * f), marker=marker, capsize=3, label=label)


def _cwd_line(ax, cwd: np.ndarray, f: float) -> None:
    if len(cwd):
        mean, std, n = mean_std(pd.Series(cwd))
        ax.axhline(mean * f, color="tab:blue", linestyle="--", label=f"CWD (n={n})")
        if n >= 2:
            ax.axhspan((mean - std) * f, (mean + std) * f, color="tab:blue", alpha=0.1)


def fig6_beta(res: Results, report: Report) -> None:
    """Paper Fig. 6: mIoU vs smoothing beta (Eq. 7) and vs the softmax temperature tau' alternative,
    with CWD as a dashed line. Runs: ``group`` "beta" / "softmax" / "cwd_ref"; untagged fallback:
    HWD with weighting smooth and mu = 0 / HWD with weighting softmax / any CWD run."""
    students = _students(res)
    made = False
    if not students.empty:
        hwd = col(students, METHOD, "") == "hwd"
        beta_rows = by_group(students, "beta", hwd & (col(students, WEIGHTING, "") == "smooth") & (col(students, MU) == 0))
        soft_rows = by_group(students, "softmax", hwd & (col(students, WEIGHTING, "") == "softmax"))
        for dataset, student in sorted(set(_pair_of(beta_rows)) | set(_pair_of(soft_rows))):
            b = _points(_in_pair(beta_rows, dataset, student), BETA) if BETA in beta_rows else pd.DataFrame()
            s = _points(_in_pair(soft_rows, dataset, student), TAU_PRIME) if TAU_PRIME in soft_rows else pd.DataFrame()
            cwd = _cwd_reference(students, dataset, student)
            f = percent_factor(pd.concat([b.get("mean", pd.Series(dtype=float)), s.get("mean", pd.Series(dtype=float)),
                                          pd.Series(cwd)]))
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
            for ax, pts, xlabel, label in ((axes[0], b, "beta (smoothing, Eq. 7)", "HWD smoothing"),
                                           (axes[1], s, "tau' (softmax temperature)", "softmax with tau'")):
                if not pts.empty:
                    _plot_series(ax, pts, f, label, "o")
                    if xlabel.startswith("beta"):
                        ax.set_xscale("log")
                _cwd_line(ax, cwd, f)
                ax.set_xlabel(xlabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            axes[0].set_ylabel("mIoU (%)" if f == 100 else "mIoU")
            fig.suptitle(f"Smoothing ablation (paper Fig. 6): {dataset}, student {student}")
            name = slug("fig6_beta", dataset, student)
            save_figure(report, name, fig)
            series = {k: v for k, v in {"HWD smoothing": ("beta", b), "softmax": ("tau'", s)}.items() if not v[1].empty}
            data, display = _series_table(series, cwd, f)
            save_table(report, name, data, display,
                       caption=f"beta / tau' ablation, {dataset}, student {student}")
            made = True
    if not made:
        report.skip("Fig. 6 beta ablation", "needs HWD runs tagged group=beta/softmax or varying distill.beta")


def fig7_mu(res: Results, report: Report) -> None:
    """Paper Fig. 7: mIoU vs the normalisation mean mu, CWD dashed. Runs: ``group`` "mu"; untagged
    fallback: HWD with weighting smooth and beta = 0.1."""
    students = _students(res)
    made = False
    if not students.empty and MU in students:
        hwd = col(students, METHOD, "") == "hwd"
        mu_rows = by_group(students, "mu", hwd & (col(students, WEIGHTING, "") == "smooth")
                           & np.isclose(pd.to_numeric(col(students, BETA), errors="coerce"), 0.1))
        for dataset, student in _pair_of(mu_rows):
            pts = _points(_in_pair(mu_rows, dataset, student), MU)
            if len(pts) < 1:
                continue
            cwd = _cwd_reference(students, dataset, student)
            f = percent_factor(pd.concat([pts["mean"], pd.Series(cwd)]))
            fig, ax = plt.subplots(figsize=(5.5, 3.4))
            _plot_series(ax, pts, f, "HWD", "o")
            _cwd_line(ax, cwd, f)
            ax.set_xlabel("mu (Eq. 6)")
            ax.set_ylabel("mIoU (%)" if f == 100 else "mIoU")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title(f"mu ablation (paper Fig. 7): {dataset}, {student}", fontsize=9)
            name = slug("fig7_mu", dataset, student)
            save_figure(report, name, fig)
            data, display = _series_table({"HWD": ("mu", pts)}, cwd, f)
            save_table(report, name, data, display, caption=f"mu ablation, {dataset}, student {student}")
            made = True
    if not made:
        report.skip("Fig. 7 mu ablation", "needs HWD runs tagged group=mu or varying distill.mu")


def table_pixel_correction(res: Results, report: Report) -> None:
    """Pixel-count correction ablation: paper's CD/(N_c+1) ("n") vs the released recipe ("none").
    Runs: ``group`` "pixel_correction"; untagged fallback: HWD runs when both settings occur."""
    students = _students(res)
    rows = pd.DataFrame()
    if not students.empty and PIXEL in students:
        hwd = students[col(students, METHOD, "") == "hwd"]
        rows = by_group(hwd, "pixel_correction", None)
        if rows.empty:
            rows = by_group(hwd, "pixel", None)
        if rows.empty and hwd[PIXEL].nunique() >= 2:
            rows = hwd
    if rows.empty or rows[PIXEL].nunique() < 1:
        report.skip("pixel-correction ablation", "needs HWD runs tagged group=pixel_correction")
        return
    out = []
    for (dataset, student), g in rows.groupby([DATASET, STUDENT]):
        ref = pd.to_numeric(g[g[PIXEL] == "none"][METRIC], errors="coerce").dropna().to_numpy(float)
        for setting, gg in g.groupby(PIXEL):
            mean, std, n = mean_std(gg[METRIC])
            cmp = compare_samples(gg[METRIC].to_numpy(float), ref) if setting != "none" else \
                {"diff": 0.0, "p_value": math.nan, "verdict": "reference"}
            out.append({"dataset": dataset, "student": student, "pixel_correction": setting, "n": n, "mean": mean,
                        "std": std, "diff_vs_none": cmp["diff"], "p_value": cmp["p_value"], "verdict": cmp["verdict"]})
    data = pd.DataFrame(out)
    f = percent_factor(data["mean"])
    display = pd.DataFrame({"dataset": data["dataset"], "student": data["student"],
                            "pixel correction": data["pixel_correction"].map({"n": "n (paper: CD/(N_c+1))",
                                                                              "none": "none (released code)"}),
                            "mIoU": [pm(m * f, s * f, n) for m, s, n in zip(data["mean"], data["std"], data["n"])],
                            "diff vs none": ["" if pd.isna(d) else f"{d * f:+.2f}" for d in data["diff_vs_none"]],
                            "verdict": data["verdict"]})
    save_table(report, "table_pixel_correction", data, display, caption="Pixel-count correction ablation (HWD)")
