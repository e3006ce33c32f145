"""CPU smoke runs of the benchmark scripts: the same code paths the GPU numbers in
benchmarks/RESULTS.md come from (timings here mean nothing; the output format and the code paths do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(args: list[str], timeout: int = 600, last_line: bool = True) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the benchmarks' last output line is one JSON object; the diagnostics print one indented object
    return json.loads(proc.stdout.strip().splitlines()[-1] if last_line else proc.stdout)


def test_step_benchmark_cpu_smoke():
    res = run_json(["benchmarks/step.py", "--device", "cpu", "--size", "48", "--classes", "5", "--batch", "2",
                    "--iters", "1", "--warm", "1", "--teacher", "deeplabv3_tiny_r101", "--student", "deeplabv3_tiny_r18",
                    "--variants", "literal,blocked,literal+tbf16+fused", "--no-reference"])
    for key in ("images_per_s", "reference_images_per_s", "ratio", "hwd_over_cwd", "device"):
        assert key in res
    assert res["device"] == "cpu" and res["images_per_s"] > 0
    details = res["details"]
    variants = ("literal", "blocked", "literal+tbf16+fused")
    for variant in variants:
        for method in ("ce", "cwd", "hwd"):
            assert details[f"{variant}/{method}_img_per_s"] > 0
    # which variant wins is a timing race (bf16 won on one CI machine); the rule is checked instead:
    # the reported best is the fastest HWD setup measured, and its rate is the headline number
    hwd_rates = {v: details[f"{v}/hwd_img_per_s"] for v in variants}
    assert res["best_variant"] == max(hwd_rates, key=hwd_rates.get)
    assert res["images_per_s"] == hwd_rates[res["best_variant"]]
    # the same steps from the same start: blocked CE (exact maths) and the bf16 teacher (rounding) agree
    assert details["hwd_loss_rel_diff_vs_first_variant"]["blocked"] < 1e-4
    assert details["hwd_loss_rel_diff_vs_first_variant"]["literal+tbf16+fused"] < 5e-2
    assert set(details["time_split_ms"]) == {"data", "teacher", "student_fwd_loss", "backward", "optimizer"}


def test_loader_benchmark_cpu_smoke():
    res = run_json(["benchmarks/loader.py", "--workers", "0", "--images", "6", "--size", "48", "--batch", "2",
                    "--iters", "3", "--steady", "1", "--step-images-per-s", "1"])
    assert res["workers_0_images_per_s"] > 0 and "meets_target" in res
    assert res["workers_0_steady_images_per_s"] > 0  # timed over the 2 batches after the first


def test_cohort_benchmark_cpu_smoke():
    """benchmarks/cohort.py: steady-state timing of K = 2 and 3 cohorts against separate runs, with
    start-up apart; member j of every cohort trains what separate run j trains."""
    res = run_json(["benchmarks/cohort.py", "--k", "2,3", "--separate", "2", "--size", "40", "--classes", "5",
                    "--batch", "2", "--warmup", "1", "--iterations", "2", "--train-images", "6",
                    "--modes", "separate,cohort_cached"])
    assert res["separate_s"] > 0 and res["cohort_cached_k2_s"] > 0 and res["cohort_cached_k3_s"] > 0
    assert res["warmup"] == 1 and res["iterations"] == 2
    for name, students in (("separate", 2), ("cohort_cached_k2", 2), ("cohort_cached_k3", 3)):
        m = res["modes"][name]
        assert m["students"] == students and len(m["final_losses"]) == students
        assert m["teacher_cache"] == (name != "separate")  # the cached cohorts read the cache (K suffix or not)
        assert m["step_s"] > 0 and m["start_s"] > 0 and m["steady_s"] > 0 and m["end_s"] >= 0
        assert m["aggregate_img_per_s"] == pytest.approx(m["per_student_img_per_s"] * (1 if name == "separate" else students))
    assert res["steady_speedup_cohort_cached_k3_over_separate"] > 0
    assert res["max_final_loss_diff_vs_separate"] < 1e-4  # the cohort trains what separate runs train



def _run_script(script: str, tmp_path: Path) -> str:
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=1800, cwd=ROOT,
                          env={**os.environ, "SMOKE": "1", "PY": sys.executable, "OUT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gpu_cohort_repeat_script_smoke(tmp_path):
    """benchmarks/gpu_cohort_repeat.sh (SMOKE=1 on the CPU): both passes finish, each prints the
    per-mode final-loss differences, and on the CPU every mode repeats the separate run."""
    out = _run_script("benchmarks/gpu_cohort_repeat.sh", tmp_path)
    assert "default rc=0" in out and "deterministic rc=0" in out, out[-2000:]
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == 2
    for res in results:
        diffs = {k: v for k, v in res.items() if k.startswith("final_loss_diff_")}
        assert {"final_loss_diff_separate2_vs_separate", "final_loss_diff_cohort_k2_vs_separate"} <= set(diffs)
        assert max(diffs.values()) < 1e-4, diffs


def test_gpu_check_script_smoke(tmp_path):
    """benchmarks/gpu_check.sh (SMOKE=1 on the CPU): every section exits 0 and leaves its output."""
    out = _run_script("benchmarks/gpu_check.sh", tmp_path)
    for section in ("ce check", "step", "cohort", "loader synthetic", "loader ade20k"):
        assert f"{section} rc=0" in out, out[-2000:]
    ce = json.loads((tmp_path / "out" / "ce_check.json").read_text())
    assert ce["blocked_loss_err"] < 1e-3 and ce["blocked_grad_max_rel_err"] < 2e-2, ce
    assert json.loads((tmp_path / "out" / "step.txt").read_text().splitlines()[-1])["images_per_s"] > 0


def test_gpu_speed_script_smoke(tmp_path):
    """benchmarks/gpu_speed.sh (SMOKE=1 on the CPU): the step with every lever (the CUDA-graph teacher
    path compiled, without graphs, on the CPU) and the steady-state cohorts exit 0; the levers train
    what the plain step trains."""
    out = _run_script("benchmarks/gpu_speed.sh", tmp_path)
    assert "step rc=0" in out and "cohort rc=0" in out, out[-2000:]
    step = json.loads((tmp_path / "out" / "step.txt").read_text().splitlines()[-1])
    diffs = step["details"]["hwd_loss_rel_diff_vs_first_variant"]
    assert set(diffs) == {"literal", "literal+fused", "literal+tbf16", "literal+tgraph+tbf16+fused"}, diffs
    assert diffs["literal+fused"] < 1e-5 and max(diffs.values()) < 5e-2, diffs
    cohort = json.loads((tmp_path / "out" / "cohort.txt").read_text().splitlines()[-1])
    assert {"cohort_k2", "cohort_k3", "separate"} <= set(cohort["modes"])
    assert cohort["max_final_loss_diff_vs_separate"] < 1e-4


def test_data_diagnostics_cli_smoke():
    """`python -m segdistill.data.diagnostics` on a tiny synthetic set (its smoke settings)."""
    res = run_json(["-m", "segdistill.data.diagnostics", "--image-size", "48", "--train-images", "8",
                    "--val-images", "4", "--num-classes", "6", "--strides", "8"], last_line=False)
    assert any(k.startswith("ceiling_os8") for k in res)


@pytest.mark.ray
@pytest.mark.slow
def test_demo_timing_smoke(tmp_path):
    """benchmarks/demo_timing.py --preset smoke: the main job's script and its analysis from an empty
    results directory, every phase seen in the study's own progress lines, with wall time and CPU use."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ray_helpers import ray_env, run_in_own_group

    results = tmp_path / "results"
    proc = run_in_own_group([sys.executable, "benchmarks/demo_timing.py", "--preset", "smoke", "--results",
                             str(results)], cwd=ROOT, env=ray_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])["demo_timing"]
    assert out["preset"] == "smoke" and out["marks_missing"] == [], out
    phases = {p["phase"]: p for p in out["phases"]}
    assert {"start-up", "ray start", "teacher", "hand-over", "students", "wrap-up", "analysis"} <= set(phases)
    assert all(p["wall_s"] >= 0 and p["demo_cpu_s"] >= 0 for p in phases.values())
    assert phases["teacher"]["wall_s"] > 0 and phases["students"]["wall_s"] > 0
    assert out["total_s"] == pytest.approx(out["study_s"] + phases["analysis"]["wall_s"], abs=0.2)
    assert sum(p["wall_s"] for p in out["phases"] if p["phase"] != "analysis") == pytest.approx(out["study_s"], abs=1.0)
    assert (results / "reports").is_dir() and any((results / "reports").iterdir())  # the analysis ran
    assert "phase" in proc.stdout and "total (study + analysis)" in proc.stdout
    # an occupied results directory is refused: the demo is timed from an empty one
    again = run_in_own_group([sys.executable, "benchmarks/demo_timing.py", "--preset", "smoke", "--results",
                              str(results)], cwd=ROOT, env=ray_env(), timeout=60)
    assert again.returncode != 0 and "not empty" in again.stderr
