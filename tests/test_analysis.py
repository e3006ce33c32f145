"""analysis/: every table's numbers against hand-computed values from a fixture results tree
written with the real Parquet writer in the real study layout (tests/analysis_fixture.py)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import analysis_fixture as fx
import numpy as np
import pandas as pd
import pytest

from analysis import ablations, load
from analysis.common import method_sort_key, ordered_methods, to_latex
from analysis.embeddings import pca_2d, tsne_2d
from analysis.make_all import COMMANDS, main, make_all, products

PAIR = "cityscapes_deeplabv3_r18"


def _build(root: Path, **kw) -> Path:
    with pytest.MonkeyPatch.context() as mp:  # durability is irrelevant in a temp dir; fsync is slow on shared disks
        mp.setattr(os, "fsync", lambda fd: None)
        return fx.build_tree(root, **kw)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def report(tree, tmp_path_factory):
    # PNG only: PDF export (font subsetting) is most of the run time; test_empty_tree_and_cli covers PDFs
    return make_all(tree, tmp_path_factory.mktemp("reports"), figure_formats=("png",))


def _csv(rep, name: str) -> pd.DataFrame:
    return pd.read_csv(rep.tables / f"{name}.csv")


def _ms(values) -> tuple[float, float]:
    x = np.asarray(values, float)
    return float(x.mean()), float(x.std(ddof=1))


# -- every artifact -------------------------------------------------------------------------------

def test_every_artifact_is_made(report):
    rep = report
    assert rep.failed == [] and rep.missing == []
    assert {a.key for a in rep.artifacts} == {key for key, _, _ in products()}
    names = {p.name for p in rep.written}
    for stem in ("fig3_smoothing", f"fig2_per_class_iou_{PAIR}", f"fig6_beta_{PAIR}", f"fig7_mu_{PAIR}",
                 f"fig5_embeddings_{PAIR}", f"fig4_samples_{PAIR}", f"fig_hwd_minus_cwd_{PAIR}",
                 f"fig_pixel_correction_{PAIR}", "fig_methods_cityscapes", "fig_methods_ade20k",
                 "search_search_hwd-demo_history", "search_search_hwd-demo_importance",
                 "curves_class_analysis-demo", f"curves_compare_methods-demo_{PAIR}"):
        assert f"{stem}.png" in names, stem
    for stem in ("table2_methods_cityscapes", "table2_methods_ade20k", "table3_methods_across_datasets_deeplabv3_r18",
                 f"table1_td_ntd_{PAIR}", f"fig2_per_class_iou_{PAIR}", f"fig6_beta_{PAIR}", f"fig7_mu_{PAIR}",
                 "table_pixel_correction", "search_search_hwd-demo_trials"):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names, stem
    assert all(p.stat().st_size > 0 for p in rep.written)


def test_index_lists_artifacts_with_their_studies(report):
    text = (report.out / "index.md").read_text()
    assert "| `compare_methods-demo` | 46 | 44 | early_stopped: 1, failed: 1 |" in text
    # Table II (cityscapes): 5 + 3 methods x 3 seeds + the teacher, all from compare_methods
    row = next(line for line in text.splitlines() if line.startswith("| Table II (cityscapes)"))
    assert "`compare_methods-demo`: 25" in row and "[md](tables/table2_methods_cityscapes.md)" in row
    row = next(line for line in text.splitlines() if line.startswith("| Fig. 6"))
    assert "`ablation_beta-demo`: 12" in row  # 8 beta + 2 softmax + 2 CWD references; not the other CWD refs
    assert "## Not made" in text and "(everything was made)" in text


# -- Tables II / III ------------------------------------------------------------------------------

def test_table2_numbers(report):
    t = _csv(report, "table2_methods_cityscapes")
    r18 = t[t["model"] == "deeplabv3_r18"]
    assert list(r18["method"]) == ["baseline", "KD", "CWD", "HWD", "MYNEW"]  # fixed order, unknown method last
    assert t["method"].iloc[0] == "teacher" and (t["method"] == "teacher").sum() == 1
    row = r18.set_index("method").loc["HWD"]
    hwd = [fx.COMPARE[("cityscapes", "deeplabv3_r18")]["hwd"] + fx.SEED_STEP["hwd"] * s for s in fx.SEEDS]
    base = [fx.COMPARE[("cityscapes", "deeplabv3_r18")]["none"] + fx.SEED_STEP["none"] * s for s in fx.SEEDS]
    assert row["n"] == 3  # the failed and early-stopped HWD runs (0.95) are not counted
    assert (row["mean"], row["std"]) == pytest.approx(_ms(hwd))
    assert row["diff_vs_baseline"] == pytest.approx(np.mean(hwd) - np.mean(base))
    assert row["verdict"].startswith("p<0.05")
    assert row["params"] == pytest.approx(13.6e6) and row["flops"] == pytest.approx(86.0e9)
    assert r18.set_index("method").loc["MYNEW", "std"] == 0.0  # three equal seeds: zero spread
    teacher = t[t["method"] == "teacher"].iloc[0]
    assert teacher["n"] == 1 and teacher["mean"] == pytest.approx(fx.TEACHER_MIOU["cityscapes"])
    # best in column: the highest student mean of each student block, never the teacher
    assert list(t[t["best"]][["model", "method"]].itertuples(index=False, name=None)) == [
        ("deeplabv3_r18", "HWD"), ("pspnet_r18", "CWD")]
    assert t["mean"].max() < 0.95  # search trials (0.99) and failed runs never enter the comparison
    md = (report.tables / "table2_methods_cityscapes.md").read_text()
    assert f"**{np.mean(hwd) * 100:.2f} ± {np.std(hwd, ddof=1) * 100:.2f}**" in md
    assert "| T: DeepLab-R101 | 61.1M | 384.7G | 80.00 |" in md and "| S: PSPNet-R18 | 12.9M | 67.6G |" in md
    tex = (report.tables / "table2_methods_cityscapes.tex").read_text()
    assert rf"\textbf{{{np.mean(hwd) * 100:.2f} $\pm$ {np.std(hwd, ddof=1) * 100:.2f}}}" in tex
    assert r"\toprule" in tex and r"mIoU (\%)" in tex


def test_table3_numbers(report):
    t = _csv(report, "table3_methods_across_datasets_pspnet_r18").set_index("method")
    assert list(t.index) == ["teacher", "baseline", "CWD", "HWD"]
    ade = [fx.COMPARE[("ade20k", "pspnet_r18")]["hwd"] + fx.SEED_STEP["hwd"] * s for s in fx.SEEDS]
    assert (t.loc["HWD", "ade20k_mean"], t.loc["HWD", "ade20k_std"]) == pytest.approx(_ms(ade))
    assert t.loc["teacher", "ade20k_mean"] == pytest.approx(fx.TEACHER_MIOU["ade20k"])
    assert t["ade20k_best"].tolist() == [False, False, False, True]
    assert t["cityscapes_best"].tolist() == [False, False, True, False]
    md = (report.tables / "table3_methods_across_datasets_pspnet_r18.md").read_text()
    assert sum(line.count("**") for line in md.splitlines() if line.startswith("| ")) == 4  # one per dataset


# -- per class: Table I, Fig. 2, HWD - CWD ---------------------------------------------------------

def test_table1_td_ntd(report):
    t = _csv(report, f"table1_td_ntd_{PAIR}").set_index("class_name")
    assert "ring" not in t.index  # never occurs in the labels
    assert list(t.index) == ["road", "building", "sidewalk", "wall", "truck", "pole"]
    for k, name in enumerate(t.index):
        ratios = [(k + 1) * (1 + s) / (0.5 + 0.5 * s) for s in fx.CLASS_SEEDS]  # per-run TD/NTD
        assert (t.loc[name, "td_ntd_mean"], t.loc[name, "td_ntd_std"]) == pytest.approx(_ms(ratios))
        assert t.loc[name, "td"] == pytest.approx(np.mean([(k + 1) * (1 + s) for s in fx.CLASS_SEEDS]))
        assert t.loc[name, "ntd"] == pytest.approx(0.75)
        assert t.loc[name, "n"] == 2
    md = (report.tables / f"table1_td_ntd_{PAIR}.md").read_text()
    assert "| road | 1.5 | 0.75 | 2.0 ± 0.0 | 2 |" in md


def test_fig2_per_class_numbers(report):
    t = _csv(report, f"fig2_per_class_iou_{PAIR}")
    assert list(t["class_name"]) == ["road", "building", "sidewalk", "wall", "truck", "pole"]  # by frequency
    assert [c for c in t.columns if c in ("baseline", "CWD", "HWD", "teacher")] == ["baseline", "CWD", "HWD", "teacher"]
    t = t.set_index("class_name")
    vals = [fx.CLASS_IOU["CWD"]["wall"] + 0.02 * s for s in fx.CLASS_SEEDS]
    assert (t.loc["wall", "CWD"], t.loc["wall", "CWD_std"]) == pytest.approx(_ms(vals))
    assert t.loc["truck", "teacher"] == pytest.approx(fx.CLASS_IOU["teacher"]["truck"])
    assert t.loc["truck", "teacher_n"] == 1  # the teacher copied into 5 studies counts once
    assert t.loc["road", "pixels"] == fx.CLASSES["road"]


def test_hwd_minus_cwd(report):
    t = _csv(report, f"fig_hwd_minus_cwd_{PAIR}").set_index("class_name")
    assert "ring" not in t.index
    total = sum(fx.CLASSES.values())
    assert t.loc["truck", "frequency"] == pytest.approx(fx.CLASSES["truck"] / total)
    assert t.loc["truck", "diff"] == pytest.approx(fx.CLASS_IOU["HWD"]["truck"] - fx.CLASS_IOU["CWD"]["truck"])
    s = np.std([0.0, 0.02], ddof=1)
    assert t.loc["truck", "se"] == pytest.approx(math.sqrt(s ** 2 / 2 + s ** 2 / 2))


# -- ablations ------------------------------------------------------------------------------------

def test_ablation_tables(report):
    beta = _csv(report, f"fig6_beta_{PAIR}")
    smooth = beta[beta["series"] == "HWD smoothing"].set_index("value")
    assert list(smooth.index) == sorted(fx.BETAS)
    m, s = _ms([fx.BETAS[0.5], fx.BETAS[0.5] + 0.01])
    assert (smooth.loc[0.5, "mean"], smooth.loc[0.5, "std"]) == pytest.approx((m, s))
    cwd = beta[beta["series"] == "CWD"].iloc[0]
    assert (cwd["mean"], cwd["n"]) == pytest.approx((np.mean(fx.CWD_REF["ablation_beta"]), 2))  # own study's CWD
    assert smooth.loc[0.5, "diff_vs_cwd"] == pytest.approx(m - np.mean(fx.CWD_REF["ablation_beta"]))
    assert set(beta[beta["series"] == "softmax"]["value"]) == set(fx.TAU_PRIMES)
    # issue 16: each mean's 95% t interval, each difference's Welch interval, the planned beta contrast
    t2 = 12.706204736  # t_{0.975} with 1 degree of freedom (2 seeds)
    assert (smooth.loc[0.5, "ci_low"], smooth.loc[0.5, "ci_high"]) == pytest.approx((m - t2 * s / math.sqrt(2),
                                                                                     m + t2 * s / math.sqrt(2)))
    assert smooth.loc[0.5, "diff_ci_low"] < smooth.loc[0.5, "diff_vs_cwd"] < smooth.loc[0.5, "diff_ci_high"]
    con = beta[beta["series"] == "contrast"].iloc[0]
    hi, lo = max(fx.BETAS), min(fx.BETAS)
    assert con["param"] == f"β={hi:g} − β={lo:g}"
    assert con["contrast_diff"] == pytest.approx(fx.BETAS[hi] - fx.BETAS[lo])
    assert con["diff_ci_low"] < con["contrast_diff"] < con["diff_ci_high"]
    mu = _csv(report, f"fig7_mu_{PAIR}")
    assert mu[mu["series"] == "CWD"]["mean"].iloc[0] == pytest.approx(fx.CWD_REF["ablation_mu"][0])
    assert mu.set_index("value").loc[-1.0, "verdict"] == "n/a (single seed)"
    pc = _csv(report, "table_pixel_correction")
    row = pc[(pc["pixel_correction"] == "n") & (pc["mu"] == 1.0)].iloc[0]
    assert row["diff_vs_none"] == pytest.approx(fx.PIXEL[("n", 1.0)] - fx.PIXEL[("none", 1.0)])
    assert row["n"] == 2 and row["std"] == pytest.approx(np.std([0, 0.004], ddof=1))
    assert pc[pc["pixel_correction"] == "CWD"]["mean"].iloc[0] == pytest.approx(
        np.mean(fx.CWD_REF["ablation_pixel_correction"]))


def test_search_reads_the_optuna_journal(report, tree):
    t = _csv(report, "search_search_hwd-demo_trials")
    assert len(t) == len(fx.SEARCH_VALUES) and t["value"].iloc[0] == pytest.approx(max(fx.SEARCH_VALUES))
    assert {"distill.mu", "distill.alpha", "distill.beta"} <= set(t.columns)
    journal = tree / "search_hwd-demo" / "optuna.journal"
    assert journal.stat().st_size > 0 and not list(tree.glob("search_hwd-demo/*.lock"))


# -- missing inputs, CLI, helpers ------------------------------------------------------------------

def test_missing_studies_are_reported_with_commands(tmp_path, caplog):
    root = _build(tmp_path / "results", parts=("ablations",))
    with caplog.at_level(logging.INFO, logger="analysis"):
        rep = make_all(root, tmp_path / "out", only=("table2", "table1", "fig5", "fig6", "fig3", "search"))
    assert rep.failed == []
    assert {a.key for a in rep.artifacts} == {"fig6", "fig3"}
    missing = {m.key: m for m in rep.missing}
    assert set(missing) == {"table2", "table1", "fig5", "search"}
    assert missing["table2"].command == COMMANDS["table2"] and "compare_methods.py" in missing["table2"].command
    text = (rep.out / "index.md").read_text()
    assert "`python experiments/class_analysis.py --preset demo`" in text
    assert "no data for Table I" in caplog.text


def test_empty_tree_and_cli(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "no data for" in out
    assert {p.name for p in (tmp_path / "out" / "figures").iterdir()} == {"fig3_smoothing.png", "fig3_smoothing.pdf"}
    assert main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2


def test_load_filters_status_and_labels(tree):
    res = load(tree)
    assert not {"cmp_failed", "cmp_early_stopped"} & set(res.trials["trial_id"])
    assert "cmp_failed" in set(res.all_trials["trial_id"])
    assert {"teacher", "baseline", "KD", "CWD", "HWD", "MYNEW"} <= set(res.trials["method_label"])


def test_method_order():
    labels = ["HWD", "teacher", "ZETA", "baseline", "MGD", "CIRKD", "DIST", "IFVD", "SKD", "KD", "CWD", "ALPHA"]
    assert ordered_methods(labels) == ["baseline", "KD", "SKD", "IFVD", "CWD", "CIRKD", "DIST", "MGD", "HWD",
                                       "ALPHA", "ZETA", "teacher"]
    assert method_sort_key("HWD") < method_sort_key("ALPHA")


def test_latex_escapes_and_bolds():
    df = pd.DataFrame({"Method": ["+HWD_x", "100%"], "mIoU": ["1.00 ± 0.10", "2"]})
    bold = pd.DataFrame({"Method": [False, False], "mIoU": [True, False]})
    tex = to_latex(df, "cap", bold)
    assert r"+HWD\_x" in tex and r"100\%" in tex and r"\textbf{1.00 $\pm$ 0.10}" in tex


def test_smoothing_function():
    w = np.array([0.0, 1.0])
    assert ablations.smoothing(w, 0.1) == pytest.approx([1.0, math.e])
    assert ablations.smoothing(np.array([0.5]), 0.5)[0] == pytest.approx(math.exp((1 - 0.5 ** 0.5) / 0.5))


def test_projections_separate_clusters(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 5)) + 8 * labels[:, None]
    for y in (pca_2d(x), tsne_2d(x, cache_dir=tmp_path)):
        centre = [y[labels == k].mean(0) for k in (0, 1)]
        spread = max(np.linalg.norm(y[labels == k] - centre[k], axis=1).mean() for k in (0, 1))
        assert np.linalg.norm(centre[0] - centre[1]) > 2 * spread
    assert len(list(tmp_path.glob("tsne_*.npy"))) == 1
    assert np.array_equal(tsne_2d(x, cache_dir=tmp_path), np.load(next(tmp_path.glob("tsne_*.npy"))))


# -- notebooks --------------------------------------------------------------------------------------

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "analysis").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    import nbformat

    assert {p.name for p in NOTEBOOKS} >= {"paper_tables.ipynb", "paper_figures.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
                compile(cell.source, f"<{path.name}>", "exec")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, tree, tmp_path, monkeypatch):
    """Execute the notebook with nbclient against the fixture results; a raising cell fails the test."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SEGDISTILL_RESULTS", str(tree))
    monkeypatch.setenv("SEGDISTILL_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("SEGDISTILL_FIGURE_FORMATS", "png")  # PDFs are the command's job (tested above)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = {k for o in outputs if o.output_type == "display_data" for k in o.data}
    assert "text/markdown" in shown if "tables" in path.stem else "image/png" in shown
    assert any((tmp_path / "reports").rglob("*.md" if "tables" in path.stem else "*.png"))
