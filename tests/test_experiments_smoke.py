"""Every experiment script runs its smoke preset end to end on real local Ray, and the analysis
turns the results into tables and figures (this is the CI run of the scripts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segdistill.catalog import REPORTED_METRIC
from segdistill.results import read_trials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_helpers import run_in_own_group  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# every experiments/*.py runs its smoke preset here, found on disk; a script whose run is checked in
# more detail has its own test below (DEDICATED) instead of the generic one
DEDICATED = {"benchmark_check"}
SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("_")
                 and p.stem not in DEDICATED)


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}", "RAY_DEDUP_LOGS": "0"}
    # its own process group, ended afterwards: a script that dies mid-way takes its Ray with it
    return run_in_own_group([sys.executable, *args], cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke_results")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_preset(script, results):
    # ablation_beta shows its live view as CI sees it (stdout a pipe: plain lines); the others run --quiet
    view = [] if script == "ablation_beta" else ["--quiet"]
    proc = _run([f"experiments/{script}.py", "--preset", "smoke", "--results", str(results), *view])
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert str(results) in proc.stdout, f"{script} does not say where its results went:\n{tail}"
    trials = read_trials(results)
    assert len(trials) > 0 and set(trials["status"]) <= {"completed", "early_stopped"}, trials[["study", "status"]]
    if script == "ablation_beta":
        out = proc.stdout
        for name in ("beta=0.1 seed 0", "beta=0.9 seed 0", "tau'=4 seed 0", "cwd seed 0"):
            assert re.search(rf"^\[ *\w+\] started {re.escape(name)}$", out, re.M), f"{name!r} not started:\n{tail}"
            assert re.search(rf"^\[ *\w+\] done {re.escape(name)}: val mIoU \d\.\d{{4}} \(best \d\.\d{{4}}\), 10/10 it",
                             out, re.M), f"{name!r} not done:\n{tail}"
        assert "ablation_beta-smoke trials: 4/4 done, 0 failed, 0 running, 0 pending" in out, tail
        assert "best val mIoU so far per setting: " in out, tail
        assert f"contrast beta=0.9 - beta=0.1 ({REPORTED_METRIC}): " in out and "95% CI of diff" in out, tail
        assert "Configuration for experiment" not in out and "Trial status:" not in out, tail  # Tune's tables: --verbose


def test_ablation_beta_demo_design():
    """Issue 16: the demo spends its budget on Fig. 6's claim: beta 0.1 vs 0.9 and CWD, 6 seeds each
    (18 students, fewer than the old 12 settings x 2 seeds); --full-grid and the paper keep the grid."""
    import importlib.util

    from segdistill.study.cli_args import ablation_spec
    from segdistill.study.presets import get_preset

    spec_ = importlib.util.spec_from_file_location("ablation_beta", ROOT / "experiments" / "ablation_beta.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    demo = get_preset("demo")
    betas, taus = mod.grid(demo)
    assert (betas, taus) == ((0.1, 0.9), ()) and mod.DEMO_SEEDS == 6
    spec = ablation_spec("ablation_beta.py", demo.replace(seeds=tuple(range(mod.DEMO_SEEDS))), mod.variants(betas, taus))
    assert sorted(v["tag.setting"] for v in spec.variants) == ["beta=0.1", "beta=0.9", "cwd"]
    assert spec.num_trials() == 18 < 12 * 2 + 2
    assert [c["setting"] for c in mod.CONTRAST] == ["beta=0.9", "beta=0.1"]
    assert mod.grid(demo, full=True) == (mod.BETAS, mod.TAU_PRIMES)
    assert mod.grid(get_preset("smoke")) == ((0.1, 0.9), (4.0,))


@pytest.mark.ray
@pytest.mark.slow
def test_benchmark_check_smoke(results):
    """benchmark_check.py (issues 9, 16): baseline, two Optuna sweeps (first data instance) and the
    distilled arms over 2 data instances (data.seed 0, 1; each its own teacher) as studies
    ``benchmark_check-smoke-*``; alpha/tau of each arm = the best sweep trial in Parquet; the three
    checks per instance and pooled, the protocols' seed stds and the cost printed, and a closing JSON
    line with the same numbers as the Parquet rows."""
    # 2 instances x (teacher + 2 baseline + 2x2 distilled) + 2x2 sweep trials: 4-8 min on 2 loaded cores
    proc = _run(["experiments/benchmark_check.py", "--preset", "smoke", "--results", str(results), "--quiet"],
                timeout=900)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    for text in ("(1) teacher - baseline", "(2) baseline seed std", "(3) cwd - baseline", "(3) hwd - baseline",
                 "chosen cwd: alpha=", "chosen hwd: alpha=", "CPU-min", "data.seed=0: teacher", "data.seed=1: teacher",
                 "baseline seed std by evaluation protocol", "protocol these numbers pick", "cost: wall time",
                 str(results)):
        assert text in proc.stdout, f"{text!r} missing:\n{tail}"
    assert len(re.findall(r"^\(\d\) .*: (?:PASS|FAIL)", proc.stdout, re.M)) == 3, tail  # one pooled verdict per check
    closing = [line for line in proc.stdout.splitlines() if line.startswith('{"benchmark_check"')]
    assert closing, tail
    out = json.loads(closing[-1])["benchmark_check"]
    assert out["instances"] == [0, 1] and out["metric"] == REPORTED_METRIC and out["wall_s"] > 0
    trials = read_trials(results)
    mine = trials[trials["study"].str.startswith("benchmark_check-smoke-")]
    assert set(mine["study"]) == set(out["studies"].values()) and set(mine["status"]) == {"completed"}
    students = mine[mine["role"] != "teacher"]
    teachers = mine[mine["role"] == "teacher"].drop_duplicates("trial_id")
    assert sorted(teachers["data.seed"]) == [0, 1]  # one teacher per instance
    for inst in (0, 1):
        per = out["per_instance"][str(inst)]
        baseline = students[(students["study"] == out["studies"]["baseline"]) & (students["data.seed"] == inst)]
        assert set(baseline["run.seed"]) == {0, 1} and set(baseline["distill.method"]) == {"none"}
        assert per["baseline_mean"] == pytest.approx(baseline[REPORTED_METRIC].mean(), abs=1e-6)
        assert per["baseline_std"]["value"] == pytest.approx(baseline[REPORTED_METRIC].std(), abs=1e-6)
        assert per["baseline_std"]["by_protocol"]["final_miou"] == pytest.approx(baseline["final_miou"].std(), abs=1e-6)
        assert per["baseline_std"]["by_protocol"]["best_miou"] == pytest.approx(baseline["best_miou"].std(), abs=1e-6)
        teacher = teachers[teachers["data.seed"] == inst][REPORTED_METRIC].iloc[0]
        assert per["teacher_gap"]["value"] == pytest.approx(teacher - baseline[REPORTED_METRIC].mean(), abs=1e-6)
        for m in ("cwd", "hwd"):
            arm = students[(students["study"] == out["studies"]["distilled"]) & (students["distill.method"] == m)
                           & (students["data.seed"] == inst)]
            assert set(arm["run.seed"]) == {0, 1}
            assert set(arm["distill.alpha"]) == {out["chosen"][m]["alpha"]}
            assert per["distillation"][m]["pass"] is False  # 2 seeds < the 5 check (3) needs
    for m in ("cwd", "hwd"):
        sweep = students[students["study"] == out["studies"][f"sweep_{m}"]]
        assert len(sweep) == 2 and set(sweep["run.seed"]) == {out["sweep_seed"]} and set(sweep["group"]) == {"search"}
        assert set(sweep["data.seed"]) == {0}  # the sweeps run on the first instance only
        best = sweep[sweep["trial_id"] == out["chosen"][m]["trial_id"]].iloc[0]
        assert best[REPORTED_METRIC] == sweep[REPORTED_METRIC].max()
        arm = students[(students["study"] == out["studies"]["distilled"]) & (students["distill.method"] == m)]
        assert set(arm["distill.alpha"]) == {best["distill.alpha"]} and set(arm["distill.tau"]) == {best["distill.tau"]}
    assert set(out["protocols"]) == {"final_miou", "last_evals_miou", "best_miou"}
    # 2 instances < the 3 the pooled verdicts need: every pooled check fails, whatever the numbers
    assert not (out["pooled"]["teacher_gap"]["pass"] or out["pooled"]["baseline_std"]["pass"]
                or out["pooled"]["distillation_pass"])
    assert out["cpu_min_total"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_analysis_on_smoke_results(results, tmp_path):
    if not any(results.glob("*/trials/*.parquet")):
        pytest.skip("no smoke results (the smoke-preset tests did not run first)")
    proc = _run(["-m", "analysis", "--results", str(results), "--out", str(tmp_path / "reports")])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert list((tmp_path / "reports").rglob("*.png")) and list((tmp_path / "reports").rglob("*.md"))


def test_every_experiment_script_is_in_the_catalog_and_smoke_tested():
    """The scripts on disk, the catalog (segdistill/catalog.py: what analysis reads from each) and the
    smoke runs above agree: a script added without a catalog entry, or a dedicated test named for a
    script that is gone, fails here."""
    from segdistill.catalog import EXPERIMENTS

    on_disk = {p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("_")}
    assert on_disk == set(EXPERIMENTS), sorted(on_disk ^ set(EXPERIMENTS))
    assert DEDICATED <= on_disk and set(SCRIPTS) | DEDICATED == on_disk
    for name in DEDICATED:
        assert f"def test_{name}_smoke(" in Path(__file__).read_text(), name
