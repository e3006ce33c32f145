"""Ablations: the smoothing function (Fig. 3, analytic), beta vs softmax-tau' (Fig. 6), mu (Fig. 7)
and the pixel-count correction (paper "n" vs released code "none")."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from segdistill import catalog
from segdistill.summary import compare_samples, contrast, mean_ci, welch_ci

from .common import (
    BETA,
    COLUMN_W,
    DATASET,
    FULL_W,
    METHOD,
    METRIC,
    MU,
    PIXEL,
    STUDENT,
    TAU_PRIME,
    Report,
    Results,
    experiment_column,
    col,
    mean_std,
    method_colour,
    percent_factor,
    plt,
    pm,
    save_figure,
    save_table,
    slug,
    students_of,
    tagged,
)

FIG3_BETAS = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
CI_LEVEL = 0.95  # Fig. 6's intervals: t intervals of each mean, Welch intervals of each difference


def smoothing(w: np.ndarray, beta: float) -> np.ndarray:
    """The smoothing inside HWD's softmax (paper Eq. 7 / Fig. 3): exp((1 - beta^w) / (1 - beta))."""
    return np.exp((1.0 - np.power(beta, w)) / (1.0 - beta))


def fig3_smoothing(report: Report, betas: tuple[float, ...] = FIG3_BETAS) -> None:
    """Paper Fig. 3: exp((1 - beta^w)/(1 - beta)) for w in [0, 1]; beside it the exponent
    (1 - beta^w)/(1 - beta) over [-2, 2] (about 95% of normalised weights), where negative w is
    pushed towards -inf for small beta (those channels are ignored). Needs no data."""
    fig, axes = plt.subplots(1, 2, figsize=(FULL_W, 2.6))
    w01, w22 = np.linspace(0.0, 1.0, 201), np.linspace(-2.0, 2.0, 401)
    for beta in betas:
        axes[0].plot(w01, smoothing(w01, beta), label=f"beta={beta:g}")
        axes[1].plot(w22, (1.0 - np.power(beta, w22)) / (1.0 - beta), label=f"beta={beta:g}")
    axes[0].set_ylabel("exp((1 - beta^w) / (1 - beta))")
    axes[0].set_title("paper Fig. 3: w in [0, 1]")
    axes[1].set_ylabel("(1 - beta^w) / (1 - beta)")
    axes[1].set_ylim(-6.0, 2.5)
    axes[1].set_title("exponent, w in [-2, 2] (clipped)")
    for ax in axes:
        ax.set_xlabel("normalised weight w")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right")
    fig.suptitle("HWD smoothing function (Eq. 7)", fontsize=8.5)
    fig.tight_layout()
    report.add("fig3", "Fig. 3 smoothing function (analytic)", save_figure(report, "fig3_smoothing", fig))


def _sweep_students(res: Results, script: str) -> pd.DataFrame:
    """Students of the ``experiments/<script>.py`` study; without one, every student (the selectors
    below then fall back to ``group`` tags or config values)."""
    t = students_of(res.trials)
    if t.empty:
        return t
    mine = t[experiment_column(t) == script]
    return mine if not mine.empty else t


def _points(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean/std (ddof=1)/n of the metric per value of ``x`` (sorted), and the mean's CI_LEVEL t
    interval (``ci_low`` / ``ci_high``, NaN for one seed)."""
    rows = []
    for value, g in df.groupby(x):
        mean, std, n = mean_std(g[METRIC])
        values = pd.to_numeric(g[METRIC], errors="coerce").dropna().to_numpy(float)
        _, low, high = mean_ci(values, CI_LEVEL)
        rows.append({"value": float(value), "n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high,
                     "values": values})
    return pd.DataFrame(rows, columns=["value", "n", "mean", "std", "ci_low", "ci_high", "values"])


def _pair_of(df: pd.DataFrame) -> list[tuple[str, str]]:
    if df.empty:
        return []
    return sorted(set(zip(col(df, DATASET, "").astype(str), col(df, STUDENT, "").astype(str))))


def _in_pair(df: pd.DataFrame, dataset: str, student: str) -> pd.DataFrame:
    if df.empty:
        return df
    return df[(col(df, DATASET, "").astype(str) == dataset) & (col(df, STUDENT, "").astype(str) == student)]


def _one_study(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """The rows of the single study that varies ``x`` the most (then: has the most rows): a sweep is
    never pooled from studies run with other schedules or settings."""
    if df.empty or "study" not in df or df["study"].nunique() <= 1:
        return df
    best = max(df.groupby("study"), key=lambda kv: (kv[1][x].nunique() if x in kv[1] else 0, len(kv[1])))[0]
    return df[df["study"] == best]


def _cwd_reference(students: pd.DataFrame, sweep: pd.DataFrame, dataset: str, student: str) -> pd.DataFrame:
    """The CWD runs (group "cwd_ref") of the sweep's own studies for (dataset, student)."""
    cwd = tagged(students, catalog.CWD_REF)
    cwd = _in_pair(cwd[col(cwd, METHOD, "") == "cwd"], dataset, student)
    same = cwd[cwd["study"].isin(set(sweep["study"]))] if "study" in cwd and not sweep.empty else cwd
    return same if not same.empty else cwd


def _values(df: pd.DataFrame) -> np.ndarray:
    return pd.to_numeric(df[METRIC], errors="coerce").dropna().to_numpy(float) if not df.empty else np.zeros(0)


def _ci_text(low: float, high: float, f: float, signed: bool = True) -> str:
    fmt = "+.2f" if signed else ".2f"
    return "" if pd.isna(low) or pd.isna(high) else f"[{low * f:{fmt}}, {high * f:{fmt}}]"


def _series_table(series: dict[str, tuple[str, pd.DataFrame]], cwd: np.ndarray, f: float,
                  contrasts: list[dict] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per setting (mean, std, n, the mean's CI; difference to CWD with its Welch CI, p and
    verdict), the CWD row, and one row per planned ``contrasts`` entry (series "contrast": the
    difference of two settings, e.g. the largest minus the smallest beta, with its Welch CI)."""
    rows = []
    for name, (param, pts) in series.items():
        for r in pts.itertuples(index=False):
            cmp = compare_samples(r.values, cwd)
            _, low, high = welch_ci(r.values, cwd, CI_LEVEL)
            rows.append({"series": name, "param": param, "value": r.value, "n": r.n, "mean": r.mean, "std": r.std,
                         "ci_low": r.ci_low, "ci_high": r.ci_high, "diff_vs_cwd": cmp["diff"],
                         "diff_ci_low": low, "diff_ci_high": high, "p_value": cmp["p_value"], "verdict": cmp["verdict"]})
    if len(cwd):
        mean, std, n = mean_std(pd.Series(cwd))
        _, low, high = mean_ci(cwd, CI_LEVEL)
        rows.append({"series": "CWD", "param": "", "value": math.nan, "n": n, "mean": mean, "std": std,
                     "ci_low": low, "ci_high": high, "diff_vs_cwd": 0.0, "diff_ci_low": math.nan,
                     "diff_ci_high": math.nan, "p_value": math.nan, "verdict": "reference"})
    for c in contrasts or []:
        rows.append({"series": "contrast", "param": c["label"], "value": math.nan, "n": c["n"], "n_ref": c["n_ref"],
                     "mean": math.nan,
                     "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "diff_vs_cwd": math.nan,
                     "contrast_diff": c["diff"], "diff_ci_low": c["ci_low"], "diff_ci_high": c["ci_high"],
                     "p_value": c["p_value"], "verdict": c["verdict"]})
    data = pd.DataFrame(rows)
    if "contrast_diff" not in data:
        data["contrast_diff"] = math.nan
    label = lambda s, p, v: (p if s == "contrast" else s if not p else f"{p}={v:g}")  # noqa: E731
    display = pd.DataFrame({
        "setting": [label(s, p, v) for s, p, v in zip(data["series"], data["param"], data["value"])],
        "mIoU (%)" if f == 100 else "mIoU": [pm(m * f, s * f) for m, s in zip(data["mean"], data["std"])],
        f"{CI_LEVEL:.0%} CI": [_ci_text(lo, hi, f, signed=False) if s != "contrast" else ""
                              for s, lo, hi in zip(data["series"], data["ci_low"], data["ci_high"])],
        "seeds": [f"{n} vs {r:g}" if s == "contrast" else str(n)
                  for s, n, r in zip(data["series"], data["n"], data.get("n_ref", pd.Series(math.nan, index=data.index)))],
        "Δ CWD (or contrast)": ["" if pd.isna(d) and pd.isna(c) else f"{(c if pd.isna(d) else d) * f:+.2f}"
                                for d, c in zip(data["diff_vs_cwd"], data["contrast_diff"])],
        f"{CI_LEVEL:.0%} CI of Δ": [_ci_text(lo, hi, f) for lo, hi in zip(data["diff_ci_low"], data["diff_ci_high"])],
        "vs seed noise": data["verdict"],
    })
    return data, display


def _beta_contrast(pts: pd.DataFrame) -> dict | None:
    """The planned contrast of Fig. 6's claim (weak smoothing, beta -> 1, hurts): the largest beta
    minus the smallest, with its Welch CI_LEVEL interval; None with fewer than 2 settings."""
    if len(pts) < 2:
        return None
    lo, hi = pts.iloc[0], pts.iloc[-1]
    c = contrast(hi["values"], lo["values"], level=CI_LEVEL)
    c["label"] = f"β={hi['value']:g} − β={lo['value']:g}"
    c["verdict"] = {"below": "below 0 beyond seed noise", "above": "above 0 beyond seed noise",
                    "includes 0": "not resolved (CI includes 0)", "n/a": "n/a (single seed)"}[c["direction"]]
    return c


def _plot_series(ax, pts: pd.DataFrame, f: float, label: str, marker: str, colour: str = "#d62728",
                 ci: bool = False) -> None:
    """Mean per setting with error bars: ± std over seeds, or (``ci``) the mean's CI_LEVEL t interval."""
    if ci:
        yerr = np.vstack([(pts["mean"] - pts["ci_low"]).fillna(0.0), (pts["ci_high"] - pts["mean"]).fillna(0.0)]) * f
    else:
        yerr = pts["std"].fillna(0.0) * f
    ax.errorbar(pts["value"], pts["mean"] * f, yerr=yerr, marker=marker, ms=4, capsize=2, color=colour, label=label)


def _cwd_line(ax, cwd: np.ndarray, f: float, ci: bool = False) -> None:
    if len(cwd):
        _cwd_hline(ax, *mean_std(pd.Series(cwd)), f, band=mean_ci(cwd, CI_LEVEL)[1:] if ci else None)


def _cwd_hline(ax, mean: float, std: float, n: int, f: float, band: tuple[float, float] | None = None) -> None:
    """CWD as a dashed line (paper Figs. 6/7), its mean ± std over seeds (or ``band``) shaded."""
    ax.axhline(mean * f, color=method_colour("CWD"), linestyle="--", label=f"CWD (n={n})")
    low, high = band if band is not None else (mean - std, mean + std)
    if n >= 2 and not (math.isnan(low) or math.isnan(high)):
        ax.axhspan(low * f, high * f, color=method_colour("CWD"), alpha=0.12, linewidth=0)


def _ylabel(f: float) -> str:
    return "mIoU (%)" if f == 100 else "mIoU"


def fig6_beta(res: Results, report: Report) -> None:
    """Paper Fig. 6: mIoU vs smoothing beta (Eq. 7) and vs the softmax temperature tau' alternative,
    with CWD as a dashed line (its seed spread shaded). Runs: ``group`` "beta" / "softmax" /
    "cwd_ref" of the ablation_beta study (catalog.py's group tags; untagged runs are not guessed)."""
    students = _sweep_students(res, "ablation_beta")
    made = False
    if not students.empty:
        beta_rows = tagged(students, catalog.BETA)
        soft_rows = tagged(students, catalog.SOFTMAX)
        for dataset, student in sorted(set(_pair_of(beta_rows)) | set(_pair_of(soft_rows))):
            b_rows = _one_study(_in_pair(beta_rows, dataset, student), BETA)
            s_rows = _one_study(_in_pair(soft_rows, dataset, student), TAU_PRIME)
            b = _points(b_rows, BETA) if BETA in beta_rows else pd.DataFrame()
            s = _points(s_rows, TAU_PRIME) if TAU_PRIME in soft_rows else pd.DataFrame()
            b, s = (b if len(b) >= 2 else pd.DataFrame()), (s if len(s) >= 2 else pd.DataFrame())
            if b.empty and s.empty:
                continue  # a sweep needs at least two settings (one value is not an ablation)
            cwd_rows = _cwd_reference(students, pd.concat([b_rows, s_rows]), dataset, student)
            cwd = _values(cwd_rows)
            f = percent_factor(pd.concat([b.get("mean", pd.Series(dtype=float)), s.get("mean", pd.Series(dtype=float)),
                                          pd.Series(cwd)]))
            panels = [(b, "β (smoothing, Eq. 7; log scale)", "HWD, smoothing β"),
                      (s, "τ' (softmax temperature)", "HWD, softmax with τ'")]
            panels = [pn for pn in panels if not pn[0].empty]  # the demo runs the beta contrast only
            fig, axes = plt.subplots(1, len(panels), figsize=(FULL_W if len(panels) == 2 else COLUMN_W, 2.5),
                                     sharey=True, squeeze=False)
            for ax, (pts, xlabel, label) in zip(axes[0], panels):
                _plot_series(ax, pts, f, label, "o", ci=True)
                if label.endswith("β"):
                    ax.set_xscale("log")
                _cwd_line(ax, cwd, f, ci=True)
                ax.set_xlabel(xlabel)
                ax.grid(alpha=0.3)
                ax.legend(loc="best")
            axes[0][0].set_ylabel(_ylabel(f))
            c = _beta_contrast(b) if not b.empty else None
            ctext = (f"; {c['label']} = {c['diff'] * f:+.2f} {_ci_text(c['ci_low'], c['ci_high'], f)}" if c else "")
            fig.suptitle(f"Smoothing ablation (paper Fig. 6), {dataset}, student {student}: mean and "
                         f"{CI_LEVEL:.0%} CI over seeds{ctext}", fontsize=8.5 if len(panels) == 2 else 7)
            fig.tight_layout()
            name = slug("fig6_beta", dataset, student)
            paths = save_figure(report, name, fig)
            series = {k: v for k, v in {"HWD smoothing": ("beta", b), "softmax": ("tau'", s)}.items() if not v[1].empty}
            data, display = _series_table(series, cwd, f, [c] if c else None)
            paths += save_table(report, name, data, display,
                                caption=f"beta / tau' ablation, {dataset}, student {student}: mean ± std over seeds, "
                                        f"{CI_LEVEL:.0%} t interval of each mean, difference to CWD with its "
                                        f"Welch {CI_LEVEL:.0%} interval and t-test; 'contrast': the largest β "
                                        "minus the smallest (Fig. 6's claim: weak smoothing, β -> 1, hurts)")
            report.add("fig6", f"Fig. 6 beta / tau' ablation ({dataset}, {student})", paths,
                       pd.concat([b_rows, s_rows, cwd_rows]))
            made = True
    if not made:
        report.skip("fig6", "Fig. 6 beta ablation", "no HWD runs tagged group=beta/softmax")


def fig7_mu(res: Results, report: Report) -> None:
    """Paper Fig. 7: mIoU vs the normalisation mean mu, CWD dashed. Runs: ``group`` "mu" of the
    ablation_mu study (catalog.py's group tag)."""
    students = _sweep_students(res, "ablation_mu")
    made = False
    if not students.empty and MU in students:
        mu_rows = tagged(students, catalog.MU)
        for dataset, student in _pair_of(mu_rows):
            rows = _one_study(_in_pair(mu_rows, dataset, student), MU)
            pts = _points(rows, MU)
            if len(pts) < 2:
                continue  # a sweep needs at least two settings (one value is not an ablation)
            cwd_rows = _cwd_reference(students, rows, dataset, student)
            cwd = _values(cwd_rows)
            f = percent_factor(pd.concat([pts["mean"], pd.Series(cwd)]))
            fig, ax = plt.subplots(figsize=(COLUMN_W, 2.5))
            _plot_series(ax, pts, f, "HWD (β = 0.1)", "o")
            _cwd_line(ax, cwd, f)
            ax.set_xlabel("μ (mean of the normalised weights, Eq. 6)")
            ax.set_ylabel(_ylabel(f))
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
            ax.set_title(f"μ ablation (paper Fig. 7), {dataset}, {student}")
            fig.tight_layout()
            name = slug("fig7_mu", dataset, student)
            paths = save_figure(report, name, fig)
            data, display = _series_table({"HWD": ("mu", pts)}, cwd, f)
            paths += save_table(report, name, data, display,
                                caption=f"mu ablation, {dataset}, student {student}: mean ± std over seeds, "
                                        "Welch's t-test against CWD")
            report.add("fig7", f"Fig. 7 mu ablation ({dataset}, {student})", paths, pd.concat([rows, cwd_rows]))
            made = True
    if not made:
        report.skip("fig7", "Fig. 7 mu ablation", "no HWD runs tagged group=mu")


def pixel_correction_table(res: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (dataset, student, mu, pixel_correction): n, mean, std over seeds; "n" (paper) is
    compared with "none" (released code) at the same mu (Welch); CWD of the same study alongside.
    Returns (table, trial rows used)."""
    students = _sweep_students(res, "ablation_pixel_correction")
    rows = pd.DataFrame()
    if not students.empty and PIXEL in students:
        hwd = students[col(students, METHOD, "") == "hwd"]
        rows = tagged(hwd, catalog.PIXEL_CORRECTION)
    if rows.empty:
        return pd.DataFrame(), rows
    rows = rows.assign(**{MU: pd.to_numeric(col(rows, MU, 0.0), errors="coerce").fillna(0.0)})
    out = []
    for (dataset, student), g in rows.groupby([DATASET, STUDENT]):
        for mu, gm in g.groupby(MU):
            ref = _values(gm[gm[PIXEL] == "none"])
            for setting, gg in sorted(gm.groupby(PIXEL), key=lambda kv: kv[0] != "n"):
                mean, std, n = mean_std(gg[METRIC])
                cmp = compare_samples(_values(gg), ref) if setting != "none" else \
                    {"diff": 0.0, "p_value": math.nan, "verdict": "reference"}
                out.append({"dataset": dataset, "student": student, "mu": float(mu), "pixel_correction": setting,
                            "n": n, "mean": mean, "std": std, "diff_vs_none": cmp["diff"], "p_value": cmp["p_value"],
                            "verdict": cmp["verdict"]})
        cwd_rows = _cwd_reference(students, g, dataset, student)
        if not cwd_rows.empty:
            mean, std, n = mean_std(cwd_rows[METRIC])
            out.append({"dataset": dataset, "student": student, "mu": math.nan, "pixel_correction": "CWD", "n": n,
                        "mean": mean, "std": std, "diff_vs_none": math.nan, "p_value": math.nan, "verdict": ""})
            rows = pd.concat([rows, cwd_rows])
    return pd.DataFrame(out), rows


PIXEL_NAMES = {"n": "n (paper: CD/(N_c+1))", "none": "none (released code)", "CWD": "CWD (reference)"}


def table_pixel_correction(res: Results, report: Report) -> None:
    """N_c-correction ablation: paper's CD/(N_c+1) ("n") vs the released recipe ("none") per mu, as a
    table and a bar figure with the seed spread."""
    data, used = pixel_correction_table(res)
    if data.empty:
        report.skip("pixel_correction", "N_c-correction ablation", "no HWD runs tagged group=pixel_correction")
        return
    f = percent_factor(data["mean"])
    display = pd.DataFrame({"dataset": data["dataset"], "student": data["student"],
                            "μ": ["" if pd.isna(m) else f"{m:g}" for m in data["mu"]],
                            "pixel correction": data["pixel_correction"].map(PIXEL_NAMES),
                            _ylabel(f): [pm(m * f, s * f) for m, s in zip(data["mean"], data["std"])],
                            "seeds": data["n"],
                            "Δ none": ["" if pd.isna(d) or p != "n" else f"{d * f:+.2f}"
                                       for d, p in zip(data["diff_vs_none"], data["pixel_correction"])],
                            "vs seed noise": data["verdict"]})
    paths = save_table(report, "table_pixel_correction", data, display,
                       caption="N_c-correction ablation (HWD): mean ± std over seeds; 'n' tested against 'none' "
                               "at the same mu (Welch)")
    for (dataset, student), d in data.groupby(["dataset", "student"]):
        hw = d[d["pixel_correction"] != "CWD"]
        mus = sorted(hw["mu"].unique())
        fig, ax = plt.subplots(figsize=(COLUMN_W, 2.4))
        for j, (setting, colour) in enumerate((("n", "#d62728"), ("none", "#ff9896"))):
            g = hw[hw["pixel_correction"] == setting].set_index("mu").reindex(mus)
            ax.bar(np.arange(len(mus)) + (j - 0.5) * 0.38, g["mean"] * f, 0.38, yerr=g["std"].fillna(0) * f,
                   capsize=2, color=colour, label=PIXEL_NAMES[setting])
        ref = d[d["pixel_correction"] == "CWD"]
        if not ref.empty:
            _cwd_hline(ax, float(ref["mean"].iloc[0]), float(ref["std"].iloc[0]), int(ref["n"].iloc[0]), f)
        lo = np.nanmin((d["mean"] - d["std"].fillna(0)).to_numpy(float)) * f
        ax.set_ylim(max(0.0, lo - 0.15 * abs(lo) - 1), None)
        ax.set_xticks(np.arange(len(mus)), [f"μ = {m:g}" for m in mus])
        ax.set_ylabel(_ylabel(f))
        ax.set_title(f"N_c correction, {dataset}, {student} (mean ± std)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False, fontsize=6.5)
        fig.tight_layout()
        paths += save_figure(report, slug("fig_pixel_correction", dataset, student), fig)
    report.add("pixel_correction", "N_c-correction ablation", paths, used)
