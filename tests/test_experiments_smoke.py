"""Every experiment script runs its smoke preset end to end on real local Ray, and the analysis
turns the results into tables and figures (this is the CI run of the scripts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segdistill.results import read_trials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_helpers import ray_stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_teachers", "ablation_beta", "ablation_mu", "ablation_pixel_correction",
           "compare_methods", "class_analysis", "search_hwd"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}", "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    yield tmp_path_factory.mktemp("smoke_results")
    ray_stop()  # the scripts shut their Ray down; this catches one that died mid-way


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_preset(script, results):
    proc = _run([f"experiments/{script}.py", "--preset", "smoke", "--results", str(results), "--quiet"])
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert str(results) in proc.stdout, f"{script} does not say where its results went:\n{tail}"
    trials = read_trials(results)
    assert len(trials) > 0 and set(trials["status"]) <= {"completed", "early_stopped"}, trials[["study", "status"]]


@pytest.mark.ray
@pytest.mark.slow
def test_analysis_on_smoke_results(results, tmp_path):
    if not any(results.glob("*/trials/*.parquet")):
        pytest.skip("no smoke results (the smoke-preset tests did not run first)")
    proc = _run(["-m", "analysis", "--results", str(results), "--out", str(tmp_path / "reports")])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert list((tmp_path / "reports").rglob("*.png")) and list((tmp_path / "reports").rglob("*.md"))
