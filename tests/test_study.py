"""The study layer (segdistill.study) on real Ray: no mocks of Ray, Tune, Train or Optuna.

Ray tests are marked ``ray``; the set runs in a few minutes on 2 CPU cores. Every Ray process a
test starts is stopped in a finalizer (``ray.shutdown`` for the Ray the test process started, the process group for a `ray start` cluster), also on failure.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_helpers import (  # noqa: E402
    TINY_TEACHER, search_spec, tiny_base,
    two_node_cluster,
)

from segdistill.config import ConfigError  # noqa: E402
from segdistill.results import read_curves, read_per_class  # noqa: E402
from segdistill.study import Resources, StudySpec, TeacherRecipe, recipe_hash  # noqa: E402
from segdistill.study.runtime import max_concurrent_trials  # noqa: E402
from segdistill.study.spec import PENDING_TEACHER  # noqa: E402

FINISHED = {"completed", "early_stopped"}


# -- specs (no Ray) ---------------------------------------------------------------------------
def test_spec_expands_variants_times_grid_and_seeds():
    spec = StudySpec(name="s", base=tiny_base(), variants=({"distill.method": "cwd"}, {"distill.method": "hwd"}),
                     grid={"distill.alpha": [1.0, 3.0]}, seeds=(0, 1, 2), teacher=TINY_TEACHER)
    assert len(spec.expand_variants()) == 4 and spec.num_trials() == 12
    cfg = spec.config_for(spec.expand_variants()[0], 2)
    assert cfg.run.seed == 2 and cfg.distill.teacher_checkpoint == PENDING_TEACHER
    assert cfg.distill.teacher_arch == TINY_TEACHER.arch


def test_spec_rejects_bad_settings():
    with pytest.raises(ConfigError, match="unknown config key"):
        StudySpec(name="s", base=tiny_base(), grid={"distill.nope": [1]})
    with pytest.raises(ConfigError, match="module level"):
        StudySpec(name="s", base=tiny_base(), search="optuna", space=lambda t: None)
    with pytest.raises(ConfigError, match="scheduler"):
        StudySpec(name="s", base=tiny_base(), scheduler="hyperband")
    with pytest.raises(ConfigError, match="study name"):
        StudySpec(name="a/b", base=tiny_base())


def test_lone_teacher_trial_holds_every_cpu():
    """A CPU-only study's teacher trials share the cluster's CPUs (capped at one node's), so a lone
    teacher trains on every core; GPU studies and Train-shaped trials keep the students' resources."""
    from segdistill.study.runner import teacher_resources

    one = Resources(cpus=1)
    assert teacher_resources(one, "inline", {"CPU": 2.0}, 1) == Resources(cpus=2)
    assert teacher_resources(one, "inline", {"CPU": 16.0}, 3) == Resources(cpus=5)
    assert teacher_resources(one, "inline", {"CPU": 16.0}, 1, node_cpus=8.0) == Resources(cpus=8)
    assert teacher_resources(Resources(cpus=4), "inline", {"CPU": 4.0}, 2) == Resources(cpus=4)  # never fewer
    assert teacher_resources(one, "inline", {"CPU": 1.0}, 4) == one
    gpu = Resources(cpus=1, gpus=0.25)
    assert teacher_resources(gpu, "inline", {"CPU": 16.0, "GPU": 1.0}, 1) == gpu
    assert teacher_resources(one, "train", {"CPU": 16.0}, 1) == one


def test_trial_threads_follow_the_trials_cpus(monkeypatch):
    """run.threads = 0 on the CPU becomes the CPUs Ray gave the trial (Ray's OMP_NUM_THREADS would
    otherwise leave torch one thread); explicit threads and GPU runs are kept."""
    import ray

    from segdistill.study import trial as trial_mod

    class Ctx:
        def get_assigned_resources(self):
            return {"CPU": 2.0}

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Ctx())
    assert trial_mod.trial_threads("cpu", 0) == 2
    assert trial_mod.trial_threads("cpu", 1) == 1
    assert trial_mod.trial_threads("cuda", 0) == 0
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # outside Ray: unchanged
    assert trial_mod.trial_threads("cpu", 0) == 0


def test_teacher_recipe_ignores_student_distill_settings_and_seed():
    base = tiny_base().replace(**{"distill.method": "hwd", "distill.teacher_arch": TINY_TEACHER.arch,
                                  "distill.teacher_checkpoint": PENDING_TEACHER})
    a = TINY_TEACHER.config_for(base.replace(**{"distill.beta": 0.3, "run.seed": 4}))
    b = TINY_TEACHER.config_for(base.replace(**{"distill.mu": 1.0, "run.out_dir": "/elsewhere"}))
    assert recipe_hash(a) == recipe_hash(b)
    assert a.distill.method == "none" and a.model.arch == TINY_TEACHER.arch and a.optim.iterations == 4
    c = TeacherRecipe(TINY_TEACHER.arch, {"optim.iterations": 5}).config_for(base)
    assert recipe_hash(c) != recipe_hash(a)


def test_max_concurrent_from_resources():
    assert max_concurrent_trials({"CPU": 16.0, "GPU": 2.0}, Resources(cpus=2, gpus=0.25).per_trial("inline")) == 8
    assert max_concurrent_trials({"CPU": 2.0}, Resources(cpus=1, num_workers=2).per_trial("train")) == 1
    assert max_concurrent_trials({"CPU": 1.0}, {"CPU": 4.0}) == 1


# -- Ray -----------------------------------------------------------------------------------------
@pytest.mark.ray
def test_local_grid_inline_writes_parquet_and_reuses_zoo_teacher(tmp_path, local_ray_cleanup):
    from segdistill.study import run_study

    spec = StudySpec(name="grid", base=tiny_base(), variants=({"distill.method": "hwd", "tag.group": "beta"},),
                     grid={"distill.beta": [0.1, 0.5]}, teacher=TINY_TEACHER, tags={"preset": "test"})
    df = run_study(spec, results_root=tmp_path, verbose=0, num_cpus=2)
    students = df[df["role"] == "student"]
    assert sorted(students["distill.beta"]) == [0.1, 0.5]
    assert set(students["status"]) == {"completed"} and (students["iterations_done"] == 10).all()
    assert (students["group"] == "beta").all() and (students["trial_shape"] == "inline").all()
    teacher = df[df["role"] == "teacher"]
    assert len(teacher) == 1 and teacher["distill.method"].iloc[0] == "none"
    zoo_model = Path(students["distill.teacher_checkpoint"].iloc[0])
    assert zoo_model.is_file() and zoo_model.parent.parent.parent.parent == (tmp_path / "_zoo")
    assert len(read_per_class(tmp_path, "grid")) == 3 * 6  # 2 students + teacher, 6 classes
    assert set(read_curves(tmp_path, "grid")["trial_id"]) == set(df["trial_id"])
    mtime = zoo_model.stat().st_mtime_ns
    spec2 = spec.replace(name="grid2", grid={"distill.beta": [0.3]})
    df2 = run_study(spec2, results_root=tmp_path, verbose=0, num_cpus=2)
    assert zoo_model.stat().st_mtime_ns == mtime, "the zoo teacher was trained again"
    assert set(df2[df2["role"] == "student"]["status"]) == {"completed"}
    from segdistill.study import StudyExistsError

    with pytest.raises(StudyExistsError):
        run_study(spec2, results_root=tmp_path, verbose=0)


@pytest.mark.ray
def test_failed_trial_is_recorded_and_ddp_train_trial_runs(tmp_path, local_ray_cleanup):
    """A trial whose fit raises is recorded with status 'failed' and the error; a Train-backed
    trial with two gloo DDP workers completes (world_size 2 in its record)."""
    import ray

    from segdistill.study import run_study

    ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level="ERROR")
    missing = str(tmp_path / "no_such_teacher.pt")
    spec = StudySpec(name="fails", base=tiny_base(4, 2),
                     variants=({"distill.method": "none"},
                               {"distill.method": "kd", "distill.teacher_arch": "deeplabv3_tiny_r18",
                                "distill.teacher_checkpoint": missing}))
    # preflight=False: the teacher goes missing after the checks (they would refuse it up front)
    df = run_study(spec, results_root=tmp_path, verbose=0, preflight=False)
    by_method = df.set_index("distill.method")
    assert by_method.loc["none", "status"] == "completed"
    assert by_method.loc["kd", "status"] == "failed"
    assert "no_such_teacher" in str(by_method.loc["kd", "error"])
    ddp = StudySpec(name="ddp", base=tiny_base(4, 2).replace(**{"optim.batch_size": 4}),  # global batch, 2 per worker
                    shape="train", resources=Resources(cpus=1, num_workers=2))
    df = run_study(ddp, results_root=tmp_path, verbose=0)
    assert df["status"].tolist() == ["completed"] and df["world_size"].tolist() == [2]
    assert df["iterations_done"].tolist() == [4]


@pytest.mark.ray
def test_asha_stops_train_backed_trials_without_dashboard_and_all_finish(tmp_path, local_ray_cleanup):
    """The known trap: no state API -> Ray Train cannot free a stopped trial's placement group.
    The driver frees it, so every trial of an ASHA sweep over Train-backed trials finishes."""
    import ray

    from segdistill.study import DashboardMissingError, run_study

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    # One trial at a time (each stopped trial's workers must be freed before the next can start),
    # a good and a hopeless learning rate, so ASHA's stop is certain: at its rung (iteration 8) the
    # lr=1e-6 trials sit below the median of those already recorded.
    spec = StudySpec(name="asha_nodash", base=tiny_base(24, 4), grid={"optim.lr": [0.02, 1e-6]}, seeds=(0, 1),
                     scheduler="asha", asha_grace=8, shape="train", resources=Resources(cpus=1), max_concurrent=1)
    with pytest.raises(DashboardMissingError):
        run_study(spec.replace(on_missing_dashboard="error"), results_root=tmp_path, verbose=0)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = run_study(spec, results_root=tmp_path, verbose=0, overwrite=True)
    elapsed = time.monotonic() - t0
    assert any("state API" in str(w.message) for w in caught)
    students = df[df["role"] == "student"]
    assert len(students) == 4 and set(students["status"]) <= FINISHED, students[["trial_id", "status"]]
    stopped = students[students["status"] == "early_stopped"]
    assert len(stopped) >= 1, "ASHA stopped no trial; the test does not exercise the trap"
    assert (stopped["iterations_done"] == 8).all() and (students["trial_shape"] == "train").all()
    assert elapsed < 300, f"the sweep took {elapsed:.0f} s: trials waited for workers"


@pytest.fixture(scope="module")
def cluster():
    with two_node_cluster(cpus_per_node=1) as address:
        yield address


@pytest.mark.ray
def test_two_node_cluster_optuna_asha_train_backed(tmp_path, cluster):
    import optuna
    import ray

    from segdistill.study import run_study

    # rung at iteration 8 (at 4 every tiny model still predicts the same classes), reduction 3:
    # ASHA keeps only trials above the 67th percentile of those already at the rung
    spec = search_spec("cluster_search", samples=6, shape="train", scheduler="asha", iterations=16, eval_every=4,
                       grace=8, reduction=3)
    try:
        df = run_study(spec, results_root=tmp_path, address=cluster, verbose=0)
    finally:
        ray.shutdown()
    students = df[df["role"] == "student"]
    assert len(students) == 6 and set(students["status"]) <= FINISHED
    assert students["node_id"].nunique() == 2, "trials did not use both nodes"
    assert (students["status"] == "early_stopped").any()
    # Optuna: every trial reached the study as COMPLETE, ASHA-stopped ones with their last value
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "cluster_search" / "optuna.journal")))
    study = optuna.load_study(study_name="cluster_search", storage=storage)
    assert len(study.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    by_value = sorted(round(t.value, 6) for t in study.trials)
    assert by_value == sorted(round(v, 6) for v in students["final_miou"])
    assert any("distill.tau_prime" in t.params for t in study.trials) or any(
        "distill.beta" in t.params for t in study.trials)


# Killing the driver mid-study and resuming: tests/test_faults.py (test_driver_killed_mid_study_...).
