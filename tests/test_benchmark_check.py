"""experiments/benchmark_check.py's arithmetic (issue 16), on hand-made frames: the pooled
within-instance std, the protocol choice and one instance's checks (the last-evaluations protocol
itself: tests/test_catalog.py).
The end-to-end run is tests/test_experiments_smoke.py::test_benchmark_check_smoke."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bc():
    spec = importlib.util.spec_from_file_location("benchmark_check", ROOT / "experiments" / "benchmark_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_metric_is_the_reported_protocol(bc):
    from segdistill.study.presets import REPORTED_METRIC

    assert bc.METRIC == REPORTED_METRIC == "last_evals_miou" and REPORTED_METRIC in bc.PROTOCOLS
    assert bc.INSTANCES["demo"] >= bc.MIN_INSTANCES == 3


def test_pooled_std_weights_by_degrees_of_freedom(bc):
    assert bc.pooled_std([0.01, 0.02], [5, 5]) == pytest.approx(math.sqrt((0.01 ** 2 + 0.02 ** 2) / 2), abs=1e-6)
    assert bc.pooled_std([0.01, 0.02], [2, 3]) == pytest.approx(math.sqrt((1 * 0.01 ** 2 + 2 * 0.02 ** 2) / 3), abs=1e-6)
    assert bc.pooled_std([None, 0.02], [1, 3]) == pytest.approx(0.02) and bc.pooled_std([None], [1]) is None


def test_protocol_choice_uses_the_noise_only(bc):
    by = {"final_miou": {"pass": False}, "last_evals_miou": {"pass": True}, "best_miou": {"pass": True}}
    assert bc.choose_protocol(by) == "last_evals_miou"  # the first that passes, in PROTOCOLS order
    assert bc.choose_protocol({p: {"pass": False} for p in bc.PROTOCOLS}) is None


def test_instance_checks(bc):
    base = [0.20, 0.21, 0.19, 0.20, 0.205]
    cwd = [0.25, 0.26, 0.245, 0.255, 0.25]
    arms = {"teacher": pd.DataFrame({"final_miou": [0.3], "best_miou": [0.36], "last_evals_miou": [0.35]}),
            "baseline": pd.DataFrame({"final_miou": base, "best_miou": base, "last_evals_miou": base}),
            "cwd": pd.DataFrame({"last_evals_miou": cwd})}  # checks (1) and (3) read METRIC only
    c = bc.instance_checks(arms, ["cwd"])
    assert c["teacher_gap"]["value"] == pytest.approx(0.35 - np.mean(base), abs=1e-6) and c["teacher_gap"]["pass"]
    assert c["baseline_std"]["value"] == pytest.approx(np.std(base, ddof=1), abs=1e-6) and c["baseline_std"]["pass"]
    e = c["distillation"]["cwd"]
    se = math.sqrt(np.var(cwd, ddof=1) / 5 + np.var(base, ddof=1) / 5)
    assert e["diff"] == pytest.approx(np.mean(cwd) - np.mean(base), abs=1e-6) and e["se"] == pytest.approx(se, abs=1e-6)
    assert e["pass"] and e["n_se"] > 2
    few = bc.instance_checks({**arms, "cwd": pd.DataFrame({"last_evals_miou": cwd[:3]})}, ["cwd"])
    assert few["distillation"]["cwd"]["beats_2se"] and not few["distillation"]["cwd"]["pass"]  # < 5 seeds


def test_cli_flags(bc):
    with pytest.raises(SystemExit):
        bc.main(["--preset", "smoke", "--methods", "kd"])
