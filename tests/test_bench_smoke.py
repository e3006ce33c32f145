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
                    "--iters", "2", "--step-images-per-s", "1"])
    assert res["workers_0_images_per_s"] > 0 and "meets_target" in res


def test_cohort_benchmark_cpu_smoke():
    res = run_json(["benchmarks/cohort.py", "--k", "2", "--size", "40", "--classes", "5", "--batch", "2",
                    "--iterations", "2", "--train-images", "6", "--modes", "separate,cohort_cached"])
    assert res["separate_s"] > 0 and res["cohort_cached_s"] > 0
    assert res["max_final_loss_diff_vs_separate"] < 1e-4  # the cohort trains what separate runs train


def test_data_diagnostics_cli_smoke():
    """`python -m segdistill.data.diagnostics` on a tiny synthetic set (its smoke settings)."""
    res = run_json(["-m", "segdistill.data.diagnostics", "--image-size", "48", "--train-images", "8",
                    "--val-images", "4", "--num-classes", "6", "--strides", "8"], last_line=False)
    assert any(k.startswith("ceiling_os8") for k in res)
