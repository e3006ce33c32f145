"""CPU smoke runs of the benchmark scripts: the same code paths the GPU numbers in
benchmarks/RESULTS.md come from (timings here mean nothing; the output format and the code paths do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
                    "--variants", "literal,blocked", "--no-reference"])
    for key in ("images_per_s", "reference_images_per_s", "ratio", "hwd_over_cwd", "device"):
        assert key in res
    assert res["device"] == "cpu" and res["images_per_s"] > 0 and res["best_variant"] in ("literal", "blocked")
    details = res["details"]
    for variant in ("literal", "blocked"):
        for method in ("ce", "cwd", "hwd"):
            assert details[f"{variant}/{method}_img_per_s"] > 0
    assert set(details["time_split_ms"]) == {"data", "teacher", "student_fwd_loss", "backward", "optimizer"}


def test_loader_benchmark_cpu_smoke():
    res = run_json(["benchmarks/loader.py", "--workers", "0", "--images", "6", "--size", "48", "--batch", "2",
                    "--iters", "3", "--steady", "1", "--step-images-per-s", "1"])
    assert res["workers_0_images_per_s"] > 0 and "meets_target" in res
    assert res["workers_0_steady_images_per_s"] > 0  # timed over the 2 batches after the first


def test_cohort_benchmark_cpu_smoke():
    res = run_json(["benchmarks/cohort.py", "--k", "2", "--size", "40", "--classes", "5", "--batch", "2",
                    "--iterations", "2", "--train-images", "6", "--modes", "separate,cohort_cached"])
    assert res["separate_s"] > 0 and res["cohort_cached_s"] > 0
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
        assert {"final_loss_diff_separate2_vs_separate", "final_loss_diff_cohort_vs_separate"} <= set(diffs)
        assert max(diffs.values()) < 1e-4, diffs


def test_gpu_check_script_smoke(tmp_path):
    """benchmarks/gpu_check.sh (SMOKE=1 on the CPU): every section exits 0 and leaves its output."""
    out = _run_script("benchmarks/gpu_check.sh", tmp_path)
    for section in ("ce check", "step", "cohort", "loader synthetic", "loader ade20k"):
        assert f"{section} rc=0" in out, out[-2000:]
    ce = json.loads((tmp_path / "out" / "ce_check.json").read_text())
    assert ce["blocked_loss_err"] < 1e-3 and ce["blocked_grad_max_rel_err"] < 2e-2, ce
    assert json.loads((tmp_path / "out" / "step.txt").read_text().splitlines()[-1])["images_per_s"] > 0


def test_data_diagnostics_cli_smoke():
    """`python -m segdistill.data.diagnostics` on a tiny synthetic set (its smoke settings)."""
    res = run_json(["-m", "segdistill.data.diagnostics", "--image-size", "48", "--train-images", "8",
                    "--val-images", "4", "--num-classes", "6", "--strides", "8"], last_line=False)
    assert any(k.startswith("ceiling_os8") for k in res)
