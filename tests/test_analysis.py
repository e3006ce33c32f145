"""analysis/: regenerate tables and figures from a small synthetic results tree."""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import ablations, load
from analysis.embeddings import pca_2d, tsne_2d
from analysis.make_all import main, make_all
from segdistill.config import TrainConfig
from segdistill.results import Embeddings, TrialRecord, write_trial

CLASSES = ["road", "wall", "truck", "pole"]
BASE = TrainConfig().replace(**{"data.name": "cityscapes", "model.arch": "deeplabv3_r18", "distill.beta": 0.1,
                                "distill.mu": 0.0})
TEACHER_KW = {"distill.teacher_arch": "deeplabv3_r101", "distill.teacher_checkpoint": "zoo/t.pt"}
MIOU = {"baseline": 0.60, "cwd": 0.65, "hwd": 0.70, "teacher": 0.80}


def _record(study: str, tid: str, cfg: TrainConfig, miou: float, *, role: str = "student", group: str | None = None,
            seed: int = 0, extras: bool = False) -> TrialRecord:
    rng = np.random.default_rng(zlib.crc32(tid.encode()))
    per_class = [dict(class_id=i, class_name=n, iou=miou + 0.01 * i, acc=0.9, pixels=1000 * (i + 1),
                      td=10.0 * (i + 1), ntd=0.5) for i, n in enumerate(CLASSES)]
    method = cfg.distill.method
    curves = [{"iteration": it, "loss/total": 2.0 / it, "loss/ce": 1.0 / it, "lr": 0.01 * (1 - it / 40)}
              | ({"loss/distill": 1.0 / it} if method != "none" else {}) for it in (10, 20, 30)]
    curves.append({"iteration": 30, "val/miou": miou})
    metrics = {"best_miou": miou, "final_miou": miou - 0.01, "pixel_acc": 0.9, "params": 13.6e6 if role == "student" else 61.1e6,
               "flops": 86.0e9, "role": role, "device": "cpu", "git_sha": "abc"}
    if group:
        metrics["group"] = group
    emb = samples = None
    if extras:
        labels = np.repeat(np.arange(4), 12)
        emb = Embeddings(features=rng.normal(size=(48, 8)) + labels[:, None], labels=labels)
        img = rng.integers(0, 255, size=(8, 10, 3), dtype=np.uint8)
        lab = rng.integers(0, 4, size=(8, 10))
        samples = [dict(index=k, image=img, label=lab, prediction=(lab + k) % 4) for k in range(2)]
    return TrialRecord(study=study, trial_id=tid, config=cfg.to_flat(), metrics=metrics, per_class=per_class,
                       curves=curves, embeddings=emb, samples=samples)


def build_tree(root: Path) -> None:
    """Teacher, baseline/CWD/HWD x 3 seeds, beta/softmax/mu sweeps (1 seed), pixel-correction pair."""
    teacher = BASE.replace(**{"model.arch": "deeplabv3_r101"})
    write_trial(root, _record("main", "teacher0", teacher, MIOU["teacher"], role="teacher", extras=True))
    for seed in range(3):
        for method in ("none", "cwd", "hwd"):
            cfg = BASE.replace(**{"distill.method": method, "run.seed": seed}, **({} if method == "none" else TEACHER_KW))
            label = "baseline" if method == "none" else method
            write_trial(root, _record("main", f"{method}_s{seed}", cfg, MIOU[label] + 0.005 * seed, seed=seed,
                                      extras=seed == 0))
    hwd = BASE.replace(**{"distill.method": "hwd"}, **TEACHER_KW)
    for beta in (0.01, 0.1, 0.5, 0.9):
        write_trial(root, _record("abl", f"beta_{beta}", hwd.replace(**{"distill.beta": beta}), 0.7 - beta / 10, group="beta"))
    for tp in (2.0, 5.0):
        cfg = hwd.replace(**{"distill.weighting": "softmax", "distill.tau_prime": tp})
        write_trial(root, _record("abl", f"soft_{tp}", cfg, 0.6 + tp / 100, group="softmax"))
    for mu in (-1.0, 0.0, 1.0):
        write_trial(root, _record("abl", f"mu_{mu}", hwd.replace(**{"distill.mu": mu}), 0.7 - abs(mu) / 20, group="mu"))
    write_trial(root, _record("abl", "cwdref", BASE.replace(**{"distill.method": "cwd"}, **TEACHER_KW), 0.65,
                              group="cwd_ref"))
    for pc in ("n", "none"):
        for seed in range(2):
            cfg = hwd.replace(**{"distill.pixel_correction": pc, "run.seed": seed})
            write_trial(root, _record("abl", f"pc_{pc}_{seed}", cfg, 0.70 + (0.02 if pc == "n" else 0) + seed / 1000,
                                      group="pixel_correction"))
    failed = _record("abl", "failed0", hwd, 0.99, group="beta")
    failed.status = "failed"
    write_trial(root, failed)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    build_tree(root)
    out = tmp_path_factory.mktemp("reports")
    return make_all(root, out, embedding_method="tsne"), root


def test_all_products_written(report):
    rep, _ = report
    assert rep.failed == []
    names = {p.name for p in rep.written}
    pair = "cityscapes_deeplabv3_r18"
    for stem in ("fig3_smoothing", f"fig2_per_class_iou_{pair}", f"fig6_beta_{pair}", f"fig7_mu_{pair}",
                 f"fig5_embeddings_{pair}", f"fig4_samples_{pair}", "curves_main", "curves_abl"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    for stem in ("table_methods", f"table1_td_ntd_{pair}", f"fig2_per_class_iou_{pair}", f"fig6_beta_{pair}",
                 f"fig7_mu_{pair}", "table_pixel_correction"):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names, stem
    assert all(p.stat().st_size > 0 for p in rep.written)
    assert rep.skipped == []
    assert (rep.out / "index.md").exists()


def test_method_table_matches_inputs(report):
    rep, _ = report
    t = pd.read_csv(rep.tables / "table_methods.csv")
    assert list(t["method"]) == ["teacher", "baseline", "CWD", "HWD"]
    row = t.set_index("method").loc["HWD"]
    vals = [MIOU["hwd"] + 0.005 * s for s in range(3)]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(np.mean(vals))
    assert row["std"] == pytest.approx(np.std(vals, ddof=1))
    assert row["diff_vs_baseline"] == pytest.approx(MIOU["hwd"] - MIOU["baseline"])
    assert row["verdict"].startswith("p<0.05")
    assert t.set_index("method").loc["teacher", "n"] == 1
    md = (rep.tables / "table_methods.md").read_text()
    assert "70.50 +/- 0.50 (n=3)" in md and "80.00 (n=1)" in md
    assert r"$\pm$" in (rep.tables / "table_methods.tex").read_text()


def test_ablation_tables_match_inputs(report):
    rep, _ = report
    beta = pd.read_csv(rep.tables / "fig6_beta_cityscapes_deeplabv3_r18.csv")
    smooth = beta[beta["series"] == "HWD smoothing"].set_index("value")
    assert list(smooth.index) == [0.01, 0.1, 0.5, 0.9]  # the failed trial (beta=0.1, 0.99) is excluded
    assert smooth.loc[0.5, "mean"] == pytest.approx(0.65)
    assert (smooth["verdict"] == "n/a (single seed)").all()
    assert set(beta[beta["series"] == "softmax"]["value"]) == {2.0, 5.0}
    assert beta[beta["series"] == "CWD"]["mean"].iloc[0] == pytest.approx(0.65)  # cwd_ref run, not the main CWD runs
    mu = pd.read_csv(rep.tables / "fig7_mu_cityscapes_deeplabv3_r18.csv").set_index("value")
    assert mu.loc[-1.0, "mean"] == pytest.approx(0.65)
    pc = pd.read_csv(rep.tables / "table_pixel_correction.csv").set_index("pixel_correction")
    assert pc.loc["n", "diff_vs_none"] == pytest.approx(0.02)
    td = pd.read_csv(rep.tables / "table1_td_ntd_cityscapes_deeplabv3_r18.csv")
    assert list(td.columns[:3]) == ["class_id", "class_name", "CWD"]
    assert td["CWD"].tolist() == pytest.approx([20.0, 40.0, 60.0, 80.0])
    iou = pd.read_csv(rep.tables / "fig2_per_class_iou_cityscapes_deeplabv3_r18.csv").set_index("class_name")
    assert list(iou.columns[1:]) == ["baseline", "CWD", "HWD", "teacher"]
    assert iou.loc["truck", "teacher"] == pytest.approx(0.82)
    assert iou.loc["road", "CWD"] == pytest.approx(0.655)


def test_empty_tree_reports_no_data(tmp_path, caplog):
    root = tmp_path / "results"
    root.mkdir()
    with caplog.at_level(logging.INFO, logger="analysis"):
        rep = make_all(root, tmp_path / "out")
    assert rep.failed == []
    assert {p.name for p in rep.written} == {"fig3_smoothing.png", "fig3_smoothing.pdf"}
    assert len(rep.skipped) == 9 and all(s.startswith("no data for") for s in rep.skipped)
    assert "no data for Tables II/III" in caplog.text


def test_cli(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out"), "-q"]) == 0
    assert "no data for" in capsys.readouterr().out
    assert main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2


def test_load_excludes_failed_and_labels(report):
    _, root = report
    res = load(root)
    assert "failed0" not in set(res.trials["trial_id"])
    assert set(res.trials["method_label"]) == {"teacher", "baseline", "CWD", "HWD"}
    assert "distill.beta" in res.curves.columns and "method_label" in res.per_class.columns


def test_smoothing_function():
    w = np.array([0.0, 1.0])
    assert ablations.smoothing(w, 0.1) == pytest.approx([1.0, math.e])
    assert ablations.smoothing(np.array([0.5]), 0.5)[0] == pytest.approx(math.exp((1 - 0.5 ** 0.5) / 0.5))


def test_projections_separate_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 5)) + 8 * labels[:, None]
    for y in (pca_2d(x), tsne_2d(x, iterations=250)):
        centre = [y[labels == k].mean(0) for k in (0, 1)]
        spread = max(np.linalg.norm(y[labels == k] - centre[k], axis=1).mean() for k in (0, 1))
        assert np.linalg.norm(centre[0] - centre[1]) > 2 * spread


def test_notebook_is_valid_nbformat4_without_outputs():
    import json

    nb = json.loads((Path(__file__).parent.parent / "analysis" / "paper_figures.ipynb").read_text())
    assert nb["nbformat"] == 4 and nb["cells"]
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
            compile("".join(cell["source"]), "<cell>", "exec")
