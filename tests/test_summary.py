"""segdistill.summary: seed-aware group statistics and Welch's t-test without SciPy."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from segdistill.summary import SINGLE_SEED, difference_se, format_table, summarize, t_two_sided_p, welch_t_test


def frame(groups: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"distill.method": g, "run.seed": i, "best_miou": v}
                         for g, vals in groups.items() for i, v in enumerate(vals)])


def test_mean_std_hand_computed():
    s = summarize(frame({"cwd": [30.0, 31.0, 35.0], "hwd": [33.0]}), ["distill.method"]).set_index("distill.method")
    assert s.loc["cwd", "n"] == 3
    assert s.loc["cwd", "mean"] == pytest.approx(32.0)
    assert s.loc["cwd", "std"] == pytest.approx(math.sqrt(((-2) ** 2 + (-1) ** 2 + 3 ** 2) / 2))  # sqrt(7)
    assert s.loc["hwd", "n"] == 1 and math.isnan(s.loc["hwd", "std"])


def test_student_t_p_values_match_tables():
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.07339, abs=1e-5)
    assert t_two_sided_p(2.228139, 10) == pytest.approx(0.05, abs=1e-6)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy
    assert t_two_sided_p(12.706205, 1) == pytest.approx(0.05, abs=1e-6)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_welch_hand_computed():
    # a: mean 2.5, var 5/3; b: mean 6, var 10 -> se^2 = 5/12 + 2 = 29/12
    t, df, p = welch_t_test([1, 2, 3, 4], [2, 4, 6, 8, 10])
    assert t == pytest.approx(-3.5 / math.sqrt(29 / 12))
    assert df == pytest.approx((29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 2 ** 2 / 4))
    assert p == pytest.approx(t_two_sided_p(t, df)) and 0.05 < p < 0.1


def test_significant_for_separated_groups():
    s = summarize(frame({"cwd": [32.8, 32.9, 33.0], "hwd": [33.8, 33.9, 34.0]}), ["distill.method"],
                  reference={"distill.method": "cwd"}).set_index("distill.method")
    assert s.loc["hwd", "diff"] == pytest.approx(1.0)
    assert s.loc["hwd", "p_value"] < 0.001
    assert bool(s.loc["hwd", "significant"]) is True
    assert s.loc["cwd", "verdict"] == "reference" and pd.isna(s.loc["cwd", "significant"])


def test_not_significant_for_overlapping_groups():
    s = summarize(frame({"cwd": [32.0, 33.0, 34.0], "hwd": [32.5, 33.5, 34.5]}), ["distill.method"],
                  reference={"distill.method": "cwd"}).set_index("distill.method")
    assert bool(s.loc["hwd", "significant"]) is False
    assert s.loc["hwd", "verdict"] == "within seed noise"


@pytest.mark.parametrize("groups", [{"cwd": [30.0], "hwd": [40.0]}, {"cwd": [30.0, 30.1, 30.2], "hwd": [90.0]},
                                    {"cwd": [30.0], "hwd": [40.0, 40.1, 40.2]}])
def test_never_claimed_with_a_single_seed(groups):
    s = summarize(frame(groups), ["distill.method"], reference={"distill.method": "cwd"}).set_index("distill.method")
    assert pd.isna(s.loc["hwd", "significant"]) and math.isnan(s.loc["hwd", "p_value"])
    assert s.loc["hwd", "verdict"] == SINGLE_SEED
    assert math.isfinite(s.loc["hwd", "diff"])  # the difference is shown, just not called significant
    text = format_table(s.reset_index())
    assert SINGLE_SEED in text and "above seed noise" not in text


def test_reference_is_stratified_by_other_columns():
    df = pd.DataFrame([{"data.name": d, "distill.method": m, "best_miou": v + (50 if d == "cityscapes" else 0)}
                       for d in ("ade20k", "cityscapes") for m, vals in {"none": [29, 30, 31], "hwd": [33, 34, 35]}.items()
                       for v in vals])
    s = summarize(df, ["data.name", "distill.method"], reference={"distill.method": "none"})
    hwd = s[s["distill.method"] == "hwd"].set_index("data.name")
    assert hwd.loc["ade20k", "ref_mean"] == pytest.approx(30.0)
    assert hwd.loc["cityscapes", "ref_mean"] == pytest.approx(80.0)
    assert hwd["diff"].tolist() == pytest.approx([4.0, 4.0])


def test_format_table_and_errors():
    s = summarize(frame({"cwd": [0.30, 0.31, 0.32], "hwd": [0.35]}), ["distill.method"],
                  reference={"distill.method": "cwd"})
    text = format_table(s, digits=2, scale=100)
    assert "31.00 +/- 1.00" in text and "35.00 (n=1)" in text and "mean +/- std" in text.splitlines()[0]
    assert format_table(summarize(frame({}).reindex(columns=["distill.method", "best_miou"]), ["distill.method"])) \
        == "(no results)"
    with pytest.raises(KeyError, match="metric"):
        summarize(frame({"a": [1.0]}), ["distill.method"], metric="nope")
    with pytest.raises(KeyError, match="group columns"):
        summarize(frame({"a": [1.0]}), ["model.arch"])


def test_difference_se_hand_computed():
    # means 2 and 5; sample variances 1 (n=3) and 8 (n=2): SE = sqrt(1/3 + 8/2)
    diff, se = difference_se([1.0, 2.0, 3.0], [3.0, 7.0])
    assert diff == pytest.approx(-3.0) and se == pytest.approx(math.sqrt(1 / 3 + 4.0))
    t, _, _ = welch_t_test([1.0, 2.0, 3.0], [3.0, 7.0])
    assert t == pytest.approx(diff / se)  # the SE is Welch's denominator
    diff, se = difference_se([0.4, float("nan")], [0.1, 0.2])  # NaNs dropped; one value left: no SE
    assert diff == pytest.approx(0.25) and math.isnan(se)
    assert all(math.isnan(v) for v in difference_se([], [0.1, 0.2]))


# -- confidence intervals (issue 16) --------------------------------------------------------

def test_t_critical_matches_tables_and_scipy():
    from segdistill.summary import t_critical

    assert t_critical(10) == pytest.approx(2.228139, abs=1e-6)  # printed tables
    assert t_critical(1) == pytest.approx(12.706205, abs=1e-6)
    assert t_critical(5, level=0.99) == pytest.approx(4.032143, abs=1e-6)
    assert t_critical(1e9) == pytest.approx(1.959964, abs=1e-6)  # the normal limit
    assert math.isnan(t_critical(0)) and math.isnan(t_critical(float("nan"))) and math.isnan(t_critical(3, level=1.0))
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3.7, 4, 9.3, 30, 200):
        for level in (0.9, 0.95, 0.99):
            assert t_critical(df, level) == pytest.approx(stats.t.ppf(0.5 + level / 2, df), rel=1e-9)


def test_mean_ci_hand_computed_and_scipy():
    from segdistill.summary import mean_ci

    m, lo, hi = mean_ci([1.0, 2.0, 3.0])  # mean 2, s = 1, n = 3: 2 +/- 4.302653 / sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - 4.302653 / math.sqrt(3), 2.0 + 4.302653 / math.sqrt(3)), abs=1e-6)
    m, lo, hi = mean_ci([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci([]))
    stats = pytest.importorskip("scipy.stats")
    x = [0.171, 0.182, 0.176, 0.169, 0.181, 0.174]
    want = stats.t.interval(0.95, len(x) - 1, loc=sum(x) / len(x), scale=stats.sem(x))
    assert mean_ci(x)[1:] == pytest.approx(want, rel=1e-9)


def test_welch_ci_hand_computed_and_scipy():
    from segdistill.summary import welch_ci

    # a = [1, 2, 3], b = [4, 6, 8]: diff -4, SE sqrt(1/3 + 4/3) = 1.290994, df = (5/3)^2 / ((1/9 + 16/9) / 2) = 2.941176
    d, lo, hi = welch_ci([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    assert d == pytest.approx(-4.0) and lo < d < hi and hi - d == pytest.approx(d - lo)
    assert 3.182446 * 1.290994 < hi - d < 4.302653 * 1.290994  # t_{0.975, 2.94} lies between df 3 and df 2
    d, lo, hi = welch_ci([1.0], [2.0, 3.0])
    assert d == pytest.approx(-1.5) and math.isnan(lo) and math.isnan(hi)
    assert welch_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0, 1.0)  # no spread: a point interval
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.171, 0.182, 0.176, 0.169, 0.181, 0.174], [0.160, 0.172, 0.158, 0.165, 0.171]
    want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert welch_ci(a, b)[1:] == pytest.approx((want.low, want.high), rel=1e-9)
    want90 = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert welch_ci(a, b, level=0.90)[1:] == pytest.approx((want90.low, want90.high), rel=1e-9)


def test_welch_ci_excludes_zero_exactly_when_p_below_alpha():
    import numpy as np

    from segdistill.summary import welch_ci

    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.normal(0.0, 1.0, 5), rng.normal(rng.uniform(-2, 2), rng.uniform(0.3, 2.0), 6)
        _, lo, hi = welch_ci(a, b)
        p = welch_t_test(a, b)[2]
        if abs(p - 0.05) > 1e-6:
            assert (lo > 0 or hi < 0) == (p < 0.05)


def test_summarize_ci_columns_and_table():
    from segdistill.summary import welch_ci

    df = frame({"cwd": [0.30, 0.31, 0.32], "hwd": [0.33, 0.35, 0.34], "kd": [0.2]})
    s = summarize(df, ["distill.method"], reference={"distill.method": "cwd"}, ci=0.95).set_index("distill.method")
    _, lo, hi = welch_ci([0.33, 0.35, 0.34], [0.30, 0.31, 0.32])
    assert (s.loc["hwd", "ci_low"], s.loc["hwd", "ci_high"]) == pytest.approx((lo, hi))
    assert math.isnan(s.loc["cwd", "ci_low"]) and math.isnan(s.loc["kd", "ci_low"])  # the reference; one seed
    text = format_table(s.reset_index(), digits=2, scale=100)
    assert "95% CI of diff" in text.splitlines()[0] and f"[{lo * 100:+.2f}, {hi * 100:+.2f}]" in text
    assert "ci_low" not in summarize(df, ["distill.method"], reference={"distill.method": "cwd"})  # opt-in


def test_contrast_directions():
    from segdistill.summary import contrast

    assert contrast([0.1, 0.11, 0.12], [0.2, 0.21, 0.22])["direction"] == "below"
    assert contrast([0.2, 0.21, 0.22], [0.1, 0.11, 0.12])["direction"] == "above"
    assert contrast([0.1, 0.2, 0.15], [0.12, 0.18, 0.16])["direction"] == "includes 0"
    c = contrast([0.1], [0.2, 0.3])
    assert c["direction"] == "n/a" and c["diff"] == pytest.approx(-0.15) and (c["n"], c["n_ref"]) == (1, 2)
