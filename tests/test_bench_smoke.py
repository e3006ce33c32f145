"""The step benchmark's CPU smoke run: the same code path the GPU numbers in bench/RESULTS.md use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_step_cpu_smoke():
    cmd = [sys.executable, str(ROOT / "bench" / "bench_step.py"), "--device", "cpu", "--size", "48", "--classes", "5",
           "--batch", "2", "--iters", "1", "--warm", "1", "--teacher", "deeplabv3_tiny_r101",
           "--student", "deeplabv3_tiny_r18", "--variants", "eager"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    for method in ("none", "cwd", "hwd"):
        assert res[f"eager/{method}_img_per_s"] > 0
    assert res["hwd_weights_only_s"] > 0


def test_data_diagnostics_cli_smoke():
    """`python -m segdistill.data.diagnostics` on a tiny synthetic set (its smoke settings)."""
    cmd = [sys.executable, "-m", "segdistill.data.diagnostics", "--image-size", "48", "--train-images", "8",
           "--val-images", "4", "--num-classes", "6", "--strides", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "platform")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert any(k.startswith("ceiling_os8") for k in out)
