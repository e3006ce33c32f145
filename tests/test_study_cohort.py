"""Cohort trials in a real local Ray study: grid configurations sharing data, seed and teacher train
together, each still one Parquet row, with the same results as one trial per configuration; a member
that diverges is recorded as failed while the others finish."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_helpers import TINY_TEACHER, tiny_base  # noqa: E402

from segdistill.config import TrainConfig  # noqa: E402
from segdistill.study import StudySpec  # noqa: E402
from segdistill.study.plan import plan_cohorts  # noqa: E402


def test_plan_cohorts_groups_compatible_configs_and_keeps_slots_busy(tmp_path):
    base = TrainConfig().replace(**{"run.out_dir": str(tmp_path), "distill.method": "hwd",
                                    "distill.teacher_arch": "deeplabv3_tiny_r18", "distill.teacher_checkpoint": "t.pt"})
    configs = [(v, s, base.replace(**{"run.seed": s, "distill.beta": 0.1 + 0.1 * v})) for v in range(5) for s in (0, 1)]
    plan = plan_cohorts(configs, slots=1, max_size=8)
    assert sorted(len(c) for c in plan) == [5, 5]  # one cohort per seed
    assert all(len({s for _, s in c}) == 1 for c in plan)
    assert sorted(tuple(m) for c in plan for m in c) == sorted((v, s) for v, s, _ in configs)
    assert sorted(len(c) for c in plan_cohorts(configs, slots=1, max_size=3)) == [2, 2, 3, 3]
    assert sorted(len(c) for c in plan_cohorts(configs, slots=4, max_size=8)) == [2, 2, 3, 3]  # ceil(10 / 4) = 3
    assert all(len(c) == 1 for c in plan_cohorts(configs, slots=10, max_size=8))


@pytest.mark.ray
def test_cohort_study_equals_one_trial_per_config_and_isolates_a_diverging_member(tmp_path, local_ray_cleanup):
    from segdistill.study import run_study

    base = tiny_base(6, 3).replace(**{"data.scale_min": 1.0, "data.scale_max": 1.0})  # finite: teacher cache
    variants = ({"distill.method": "hwd", "distill.beta": 0.1}, {"distill.method": "hwd", "distill.beta": 0.9},
                {"distill.method": "cwd", "distill.alpha": 1e38},  # the total loss overflows: diverges
                {"distill.method": "none"})
    spec = StudySpec(name="cohort", base=base, variants=variants, seeds=(0, 1), teacher=TINY_TEACHER, max_concurrent=1)
    df = run_study(spec, results_root=tmp_path, verbose=0, num_cpus=2)
    students = df[df["role"] == "student"]
    assert len(students) == 8 and students["trial_id"].is_unique
    # 8 configs, 1 slot, cap 8: per seed one cohort of the three distilled configs (one teacher) and the
    # baseline alone (no teacher: another signature)
    assert sorted(students["cohort_size"].astype(int)) == [1, 1, 3, 3, 3, 3, 3, 3]
    assert students[students["cohort_size"] == 3].groupby("cohort_id")["run.seed"].nunique().tolist() == [1, 1]
    huge = students["distill.alpha"].astype(float) > 1e30  # alpha unset (None -> NaN): the method's weight
    assert (students.loc[huge, "effective_alpha"] > 1e30).all()
    diverged = students[huge]
    assert set(diverged["status"]) == {"failed"}
    assert diverged["error_reason"].str.contains("non-finite loss").all()
    ok = students[~huge]
    assert set(ok["status"]) == {"completed"} and (ok["iterations_done"] == 6).all()
    assert any((tmp_path / "_zoo" / "_logits").glob("teacher-logits-*.pt")), "the study's teacher cache was not used"

    solo = run_study(spec.replace(name="solo", cohort_size=1, variants=variants[:2] + variants[3:]),
                     results_root=tmp_path, verbose=0, num_cpus=2)
    solo = solo[solo["role"] == "student"]
    assert "cohort_id" not in solo or solo["cohort_id"].isna().all()
    key = ["distill.method", "distill.beta", "run.seed"]
    a = ok.set_index(key)["final_miou"].sort_index()
    b = solo.set_index(key)["final_miou"].sort_index()
    # method 'none' has no beta: its key holds NaN, and NaN != NaN in a plain list comparison, so the
    # index is compared with pandas' equals (NaN labels match) and the values by position
    assert a.index.equals(b.index), f"{list(a.index)} != {list(b.index)}"
    assert (abs(a.to_numpy() - b.to_numpy()) < 1e-6).all(), f"cohort results differ from one-trial-per-config results:\n{a}\n{b}"
