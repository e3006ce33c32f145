"""Seed-aware summaries of a results table (what experiment scripts print at the end).

The paper reports single runs (docs/REFERENCE.md "Training recipe": the std of 3 CWD runs was 0.101 mIoU), so a difference
between two methods only means something when it exceeds seed noise. :func:`summarize` groups
trials, reports n / mean / std per group and, given a reference group, the difference to it with
Welch's two-sided t-test (implemented here with ``math``; SciPy is not a dependency). A difference
is called significant only when both groups have n >= 2 and p < ``alpha``; with a single seed the
verdict is "n/a (single seed)" and ``significant`` is ``<NA>``, never True.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

SINGLE_SEED = "n/a (single seed)"


# -- Student t distribution without SciPy ---------------------------------------------------

def _betacf(a: float, b: float, x: float, max_iter: int = 300, eps: float = 1e-14) -> float:
    """Continued fraction for the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: P(|T| >= |t|)."""
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) != mean(b): returns ``(t, df, p_two_sided)``.

    Needs n >= 2 in both samples (else all NaN). Zero variance in both: p = 0 if the means
    differ, 1 if they are equal.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    se2 = va + vb
    if se2 == 0.0:
        return (math.copysign(math.inf, diff) if diff else 0.0), math.nan, (0.0 if diff else 1.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(t), float(df), t_two_sided_p(float(t), float(df))


def difference_se(x: Sequence[float], ref: Sequence[float]) -> tuple[float, float]:
    """``(mean(x) - mean(ref), sqrt(s_x^2 / n_x + s_ref^2 / n_ref))``: a difference of means and its
    standard error (sample variances, ddof=1; the denominator of Welch's t). Non-finite values are
    dropped; the difference is NaN if either sample is empty, the SE NaN unless both have n >= 2."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan
    return diff, math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def t_critical(df: float, level: float = 0.95) -> float:
    """The two-sided Student t critical value: ``t`` with P(|T| >= t) = 1 - ``level`` for ``df``
    degrees of freedom (bisection on :func:`t_two_sided_p`; ``df`` may be fractional, as Welch's is).
    NaN for df <= 0 or NaN; 1.959964 (normal) as df -> inf."""
    if df is None or math.isnan(df) or df <= 0 or not 0.0 < level < 1.0:
        return math.nan
    alpha = 1.0 - level
    if math.isinf(df):
        df = 1e12
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:  # p falls as t grows; double until it brackets
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the finite values of ``x`` and its ``level`` t interval
    (mean +/- t_{n-1} s / sqrt(n), sample std ddof=1). The bounds are NaN unless n >= 2."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    m = float(a.mean())
    if len(a) < 2:
        return m, math.nan, math.nan
    half = t_critical(len(a) - 1, level) * float(a.std(ddof=1)) / math.sqrt(len(a))
    return m, m - half, m + half


def welch_ci(x: Sequence[float], ref: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(diff, low, high)``: mean(x) - mean(ref) and its Welch ``level`` interval,
    diff +/- t_{df} * SE with SE from :func:`difference_se` and the Welch-Satterthwaite df (the
    interval :func:`welch_t_test` inverts: 0 lies outside the 95% interval exactly when p < 0.05).
    The bounds are NaN unless both samples have n >= 2; a zero SE gives the interval [diff, diff]."""
    diff, se = difference_se(x, ref)
    if math.isnan(se):
        return diff, math.nan, math.nan
    if se == 0.0:
        return diff, diff, diff
    df = welch_t_test(x, ref)[1]
    half = t_critical(df, level) * se
    return diff, diff - half, diff + half


def contrast(x: Sequence[float], ref: Sequence[float], *, level: float = 0.95) -> dict[str, Any]:
    """mean(x) - mean(ref) with its Welch ``level`` interval and p-value, and where the interval lies:
    ``direction`` is "below" (whole interval < 0), "above" (> 0), "includes 0", or "n/a" (n < 2)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    diff, low, high = welch_ci(a, b, level)
    _, df, p = welch_t_test(a, b)
    direction = ("n/a" if math.isnan(low) else "below" if high < 0 else "above" if low > 0 else "includes 0")
    return {"diff": diff, "ci_low": low, "ci_high": high, "level": level, "p_value": p, "df": df,
            "n": len(a), "n_ref": len(b), "direction": direction}


# -- summaries ------------------------------------------------------------------------------

def _matches(df: pd.DataFrame, values: Mapping[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for col, val in values.items():
        if col not in df:
            raise KeyError(f"reference column {col!r} not in the table; columns are {list(df.columns)}")
        mask &= df[col].isna() if _isna(val) else (df[col] == val)
    return mask


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def summarize(df: pd.DataFrame, by: Sequence[str], metric: str = "best_miou",
              reference: Mapping[str, Any] | None = None, *, alpha: float = 0.05,
              ci: float | None = None) -> pd.DataFrame:
    """Per-group n / mean / std of ``metric`` (NaNs ignored), optionally against a reference.

    ``reference`` picks the reference rows by column values, e.g. ``{"distill.method": "cwd"}``.
    Columns of ``by`` not named in ``reference`` stratify the comparison: with
    ``by=["data.name", "distill.method"]`` each dataset's methods are compared with that dataset's
    reference rows. Added columns: ``ref_n``, ``ref_mean``, ``diff`` (mean - ref_mean), ``p_value``
    (Welch, two-sided), ``significant`` (nullable bool: ``<NA>`` unless both n >= 2) and ``verdict``
    ("reference", "p<0.05: above seed noise", "within seed noise", "n/a (single seed)",
    "no reference rows"). ``ci`` (e.g. 0.95) with a reference adds ``ci_low`` / ``ci_high``: the
    Welch interval of ``diff`` at that level (:func:`welch_ci`; NaN unless both n >= 2).
    """
    by = list(by)
    if metric not in df:
        raise KeyError(f"metric {metric!r} not in the table; columns are {list(df.columns)}")
    missing = [c for c in by if c not in df]
    if missing:
        raise KeyError(f"group columns {missing} not in the table; columns are {list(df.columns)}")
    base_cols = [*by, "n", "mean", "std"]
    ref_cols = ["ref_n", "ref_mean", "diff", *(["ci_low", "ci_high"] if ci else []), "p_value", "significant",
                "verdict"]
    if df.empty:
        return pd.DataFrame(columns=base_cols + (ref_cols if reference else []))
    values = pd.to_numeric(df[metric], errors="coerce")
    rows = []
    for key, g in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        x = values.loc[g.index].dropna().to_numpy(np.float64)
        row: dict[str, Any] = dict(zip(by, key))
        row.update(n=len(x), mean=float(x.mean()) if len(x) else math.nan,
                   std=float(x.std(ddof=1)) if len(x) >= 2 else math.nan)
        if reference:
            row.update(_compare(df, values, row, by, reference, x, alpha, ci))
        rows.append(row)
    out = pd.DataFrame(rows, columns=base_cols + (ref_cols if reference else []))
    out["n"] = out["n"].astype("int64")
    if reference:
        out["ref_n"] = out["ref_n"].astype("int64")
        out["significant"] = out["significant"].astype("boolean")
    return out


def _compare(df: pd.DataFrame, values: pd.Series, row: Mapping[str, Any], by: list[str],
             reference: Mapping[str, Any], x: np.ndarray, alpha: float, ci: float | None = None) -> dict[str, Any]:
    strata = {c: row[c] for c in by if c not in reference}
    is_ref = all(c in row and (row[c] == v or (_isna(row[c]) and _isna(v))) for c, v in reference.items())
    ref = values[_matches(df, {**reference, **strata})].dropna().to_numpy(np.float64)
    res: dict[str, Any] = dict(ref_n=len(ref), ref_mean=float(ref.mean()) if len(ref) else math.nan,
                               diff=math.nan, p_value=math.nan, significant=pd.NA, verdict="")
    if len(ref) == 0 or len(x) == 0:
        res["verdict"] = "no reference rows" if len(ref) == 0 else "no values"
        return res
    if ci:
        res.update(ci_low=math.nan, ci_high=math.nan)
    if is_ref:
        res.update(diff=0.0, verdict="reference")
        return res
    res.update(compare_samples(x, ref, alpha=alpha))
    if ci:
        _, res["ci_low"], res["ci_high"] = welch_ci(x, ref, ci)
    return res


def compare_samples(x: Sequence[float], ref: Sequence[float], *, alpha: float = 0.05) -> dict[str, Any]:
    """``diff`` (mean(x) - mean(ref)), Welch ``p_value``, ``significant`` (``<NA>`` unless both
    n >= 2) and a ``verdict`` string. Never claims a difference from a single seed."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    x, ref = x[np.isfinite(x)], ref[np.isfinite(ref)]
    out: dict[str, Any] = dict(diff=math.nan, p_value=math.nan, significant=pd.NA, verdict="no values")
    if len(x) == 0 or len(ref) == 0:
        return out
    out["diff"] = float(x.mean() - ref.mean())
    if len(x) < 2 or len(ref) < 2:
        out["verdict"] = SINGLE_SEED
        return out
    p = float(welch_t_test(x, ref)[2])
    out.update(p_value=p, significant=bool(p < alpha),
               verdict=f"p<{alpha:g}: above seed noise" if p < alpha else "within seed noise")
    return out


# -- text -----------------------------------------------------------------------------------

def _fmt(value: Any, digits: int) -> str:
    if value is None or _isna(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(df: pd.DataFrame, *, digits: int = 4, scale: float = 1.0, ci_label: str = "95%") -> str:
    """A :func:`summarize` frame as an aligned text table with ``mean +/- std`` (``scale`` multiplies
    mean/std/diff, e.g. 100 for percent). Single-seed groups print ``mean (n=1)``. A frame with
    ``ci_low`` / ``ci_high`` (``summarize(ci=...)``) gets a ``"<ci_label> CI of diff"`` column."""
    if df.empty:
        return "(no results)"
    stat_cols = {"n", "mean", "std", "ref_n", "ref_mean", "diff", "ci_low", "ci_high", "p_value", "significant",
                 "verdict"}
    group_cols = [c for c in df.columns if c not in stat_cols]
    headers = [*group_cols, "n", "mean +/- std"]
    has_ref = "diff" in df
    has_ci = "ci_low" in df
    if has_ref:
        headers += ["diff vs ref", *([f"{ci_label} CI of diff"] if has_ci else []), "p (Welch)", "verdict"]
    lines = []
    for _, r in df.iterrows():
        mean, std = r["mean"] * scale, r["std"] * scale
        ms = _fmt(mean, digits) if _isna(std) else f"{_fmt(mean, digits)} +/- {_fmt(std, digits)}"
        if _isna(std) and r["n"] == 1:
            ms += " (n=1)"
        cells = [_fmt(r[c], digits) for c in group_cols] + [str(int(r["n"])), ms]
        if has_ref:
            diff = r["diff"] * scale
            cells += [("n/a" if _isna(diff) else f"{diff:+.{digits}f}")]
            if has_ci:
                lo, hi = r["ci_low"] * scale, r["ci_high"] * scale
                cells += ["" if _isna(lo) else f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"]
            cells += [_fmt(r["p_value"], 3), str(r["verdict"])]
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    fmt_row = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(headers), fmt_row(["-" * w for w in widths]), *(fmt_row(c) for c in lines)])


__all__ = ["summarize", "format_table", "compare_samples", "difference_se", "welch_t_test", "welch_ci", "mean_ci", "contrast",
           "t_critical", "t_two_sided_p", "betainc", "SINGLE_SEED"]
