"""Reliability around a study (issue 20): Ctrl-C and SIGTERM never turn unfinished trials into
finished ones, one driver per study, a broken zoo teacher is retrained, a changed design is not
resumed silently, bad flags and unusable addresses/results roots are answered in one line.

The faults are real: signals to a running experiment script (its process group, as a terminal
sends, or the driver alone, as ``timeout`` and schedulers do), two drivers at once, a zoo
``model.pt`` truncated or deleted on disk, a lock holder killed with SIGKILL, a closed TCP port.
docs/ERRORS.md lists the messages.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_helpers import REPO, TINY_TEACHER, ray_env, stop_group, tiny_base  # noqa: E402

from segdistill.config import ConfigError, TrainConfig  # noqa: E402
from segdistill.results import read_trials  # noqa: E402
from segdistill.study import Resources, StudySpec  # noqa: E402
from segdistill.study import cli_args  # noqa: E402
from segdistill.study.guards import (DesignChange, DesignChangedError, ResultsRootError, StudyLockedError,  # noqa: E402
                                     check_results_root, compare_designs, study_lock, verify_zoo_entry)

pytestmark = pytest.mark.faults
SCRIPT = str(REPO / "experiments" / "ablation_beta.py")
SMOKE_STUDY = "ablation_beta-smoke"
ITERS = "400"  # long enough that the first driver still runs when the second one has started


def _parse(argv: list[str]):
    p = cli_args.parser("test")
    return p.parse_args(argv)


# =============================================================================================
# Bad flags: one line naming the flag, the value and what is allowed; before Ray starts
@pytest.mark.parametrize("argv, flag", [
    (["--seeds", "0"], "--seeds"), (["--seeds", "-2"], "--seeds"), (["--iterations", "0"], "--iterations"),
    (["--workers", "0"], "--workers"), (["--gpus", "-1"], "--gpus"), (["--cpus", "-1"], "--cpus"),
    (["--seeds", "two"], "--seeds"),
])
def test_bad_numeric_flags_are_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert flag in err and repr(argv[1]) in err and ("must be" in err or "is not" in err), err


@pytest.mark.parametrize("argv, needle", [
    (["--cpus", "0"], "--cpus 0: a trial needs some CPU or GPU"),
    (["--dataset", "nosuch"], "--dataset 'nosuch': unknown dataset; known: ade20k"),
    (["--dataset", "synthetc"], "did you mean 'synthetic'?"),
    (["--preset", "paper"], "--preset paper needs --data-root"),
    (["--preset", "released"], "--preset released needs --data-root"),
    (["--resume", "--overwrite"], "--resume and --overwrite"),
])
def test_bad_flag_values_are_config_errors_naming_the_flag(argv, needle):
    with pytest.raises(ConfigError) as exc:
        cli_args.preset_from_args(_parse(argv))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_config_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'distill.betta' \(did you mean 'distill.beta'\?\)"):
        TrainConfig().replace(**{"distill.betta": 0.3})
    with pytest.raises(ConfigError, match=r"did you mean 'distill.beta'"):
        TrainConfig().replace(**{"distil.beta": 0.3})


def test_script_bad_flag_is_one_line_and_debug_shows_the_traceback(tmp_path):
    """The whole script path (script_main): one line and rc 2; --debug: the traceback."""
    env = ray_env()
    out = subprocess.run([sys.executable, SCRIPT, "--preset", "paper", "--results", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "--preset paper needs --data-root DIR (the directory holding the dataset)"
    out = subprocess.run([sys.executable, SCRIPT, "--preset", "paper", "--debug"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" in out.stderr, out.stderr[-2000:]


# =============================================================================================
# --address with nothing listening: bounded, the address in the message, before ray.init
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket closes: nothing listens there


def test_address_with_nothing_listening_fails_within_the_bound(tmp_path, monkeypatch):
    import ray

    from segdistill.study import runtime
    from segdistill.study.runner import run_study

    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(runtime.RayAddressError) as exc:
        runtime.probe_address(f"127.0.0.1:{port}", timeout_s=2.0)
    took = time.monotonic() - t0
    assert 1.5 <= took < 6, took
    assert f"127.0.0.1:{port}" in str(exc.value) and "within 2 s" in str(exc.value)

    monkeypatch.setattr(runtime, "ADDRESS_PROBE_S", 2.0)
    monkeypatch.setattr(runtime.probe_address, "__defaults__", (2.0,))
    spec = StudySpec(name="addr", base=tiny_base(), variants=({"distill.method": "none"},))
    t0 = time.monotonic()
    with pytest.raises(runtime.RayAddressError, match=f"--address 127.0.0.1:{port}: nothing answers"):
        run_study(spec, results_root=tmp_path, address=f"127.0.0.1:{port}", progress="off")
    assert time.monotonic() - t0 < 60
    assert not ray.is_initialized()
    with pytest.raises(runtime.RayAddressError, match="expected HOST:PORT"):
        runtime.probe_address("nonsense", timeout_s=1)


# =============================================================================================
# Results root: not a directory, not writable, (nearly) full disk: reported before any work
def test_results_root_that_is_no_writable_directory_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ResultsRootError, match="is a regular file, not a directory"):
        check_results_root(f)
    with pytest.raises(ResultsRootError, match=r"is under .*file, which is a regular file"):
        check_results_root(f / "sub" / "dir")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ResultsRootError, match="not writable|cannot create"):
                check_results_root(ro / "r")
        finally:
            ro.chmod(0o700)
    monkeypatch.setenv("SEGDISTILL_MIN_FREE_MB", str(1 << 40))  # more than any disk has
    with pytest.raises(ResultsRootError, match=r"MiB free on its disk, a study needs at least"):
        check_results_root(tmp_path / "ok")
    monkeypatch.delenv("SEGDISTILL_MIN_FREE_MB")
    assert check_results_root(tmp_path / "ok").is_dir()


@pytest.mark.skipif(not Path("/dev/shm").is_dir() or os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_full_disk_is_reported_before_any_work(tmp_path):
    """A real 3 MiB tmpfs (as in the issue), filled up: refused with the path, nothing written."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(ResultsRootError, match=r"only \d+ MiB free"):
            check_results_root(mnt / "results")
        with open(mnt / "fill", "wb") as fh:  # fill it to the last byte
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        with pytest.raises(ResultsRootError, match="disk is full|MiB free|not writable"):
            check_results_root(mnt / "results2", need_mb=0)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# =============================================================================================
# One driver per study: flock, refused with the holder, released by a SIGKILL
_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from segdistill.study.guards import study_lock
with study_lock(Path(sys.argv[2]), "s"):
    print("LOCKED", flush=True)
    time.sleep(600)
"""


def test_study_lock_refuses_a_second_driver_and_a_killed_one_leaves_no_lock(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(REPO / "platform"), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "LOCKED"
        t0 = time.monotonic()
        with pytest.raises(StudyLockedError) as exc:
            with study_lock(tmp_path, "s"):
                pass
        assert time.monotonic() - t0 < 1.0  # at once, no waiting
        assert f"pid {proc.pid} on host {socket.gethostname()}" in str(exc.value), str(exc.value)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with study_lock(tmp_path, "s"):  # the kernel released the dead holder's lock
            info = json.loads((tmp_path / ".s.lock").read_text())
            assert info["pid"] == os.getpid()
    finally:
        stop_group(proc)


# =============================================================================================
# Zoo entries: verified before trials; truncated or deleted -> retrained, never N failed trials
def test_verify_zoo_entry_on_real_files(tmp_path):
    import torch

    from segdistill.models import build_model
    from segdistill.train import save_model_artifact

    cfg = tiny_base()
    good = save_model_artifact(build_model(cfg.model.arch, cfg.data.num_classes), cfg, tmp_path / "model.pt")
    assert verify_zoo_entry(good) is None
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert verify_zoo_entry(cut) is not None
    (tmp_path / "empty.pt").write_bytes(b"")
    assert verify_zoo_entry(tmp_path / "empty.pt") == "the file is empty"
    assert verify_zoo_entry(tmp_path / "nope.pt") == "the file is missing"
    torch.save([1, 2], tmp_path / "list.pt")
    assert "not a state dict" in verify_zoo_entry(tmp_path / "list.pt")
    torch.save({"format": 1, "arch": "x", "state_dict": {"w": torch.zeros(64, 64)}}, tmp_path / "foreign.pt")
    assert verify_zoo_entry(tmp_path / "foreign.pt") is not None


def _kd_spec(name: str) -> StudySpec:
    return StudySpec(name=name, base=tiny_base(6, 3), variants=({"distill.method": "kd"},), teacher=TINY_TEACHER,
                     resources=Resources(cpus=1), tags={"preset": "test"})


@pytest.mark.ray
def test_truncated_or_deleted_zoo_teacher_is_retrained(tmp_path, local_ray_cleanup):
    from segdistill.study.runner import run_study

    zoo = tmp_path / "zoo"
    df = run_study(_kd_spec("z1"), results_root=tmp_path, zoo=zoo, progress="off")
    assert (df[df["role"] != "teacher"]["status"] == "completed").all()
    [model] = list(zoo.rglob("model.pt"))
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 3])  # a real torn file on disk

    df = run_study(_kd_spec("z2"), results_root=tmp_path, zoo=zoo, progress="off")
    students = df[df["role"] != "teacher"]
    assert len(students) == 1 and (students["status"] == "completed").all(), students[["trial_id", "status"]]
    assert verify_zoo_entry(model) is None, "the teacher was not retrained"
    assert list(model.parent.glob("model.pt.corrupt-*")), "the torn file was not kept aside"

    model.unlink()  # deleted
    df = run_study(_kd_spec("z3"), results_root=tmp_path, zoo=zoo, progress="off")
    students = df[df["role"] != "teacher"]
    assert len(students) == 1 and (students["status"] == "completed").all(), students[["trial_id", "status"]]
    assert verify_zoo_entry(model) is None


# =============================================================================================
# --resume with another design: added seeds/settings run exactly once; other changes refused
def test_compare_designs_lists_what_differs():
    old = {"settings": {"a": {"distill.beta": 0.1}}, "seeds": [0, 1], "base": {"optim.iterations": 10},
           "search": {"search": "grid"}}
    new = {"settings": {"a": {"distill.beta": 0.2}, "b": {}}, "seeds": [0], "base": {"optim.iterations": 20},
           "search": {"search": "grid"}}
    added, problems = compare_designs(old, new)
    assert added.new_settings == ("b",) and added.new_seeds == ()
    text = "; ".join(problems)
    assert "base config optim.iterations: 10 -> 20" in text
    assert "setting 'a': distill.beta: 0.1 -> 0.2" in text
    assert "seeds [1] were removed" in text
    # a design recorded when every config carried every method's parameters: the same study
    recorded = {"settings": {"hwd": {"distill.method": "hwd", "distill.beta": 0.1}}, "seeds": [0],
                "base": {"optim.iterations": 10, "distill.method": "none", "distill.mu": 1.0, "distill.ifvd_weight": 20.0},
                "search": {"search": "grid"}}
    now = {"settings": {"hwd": {"distill.method": "hwd", "distill.beta": 0.1, "distill.mu": 1.0}}, "seeds": [0],
           "base": {"optim.iterations": 10, "distill.method": "none"}, "search": {"search": "grid"}}
    assert compare_designs(recorded, now) == (DesignChange(), [])
    now["settings"]["hwd"]["distill.mu"] = 0.0
    assert compare_designs(recorded, now)[1] == ["setting 'hwd': distill.mu: 1.0 -> 0.0"]


def _grid_spec(lrs=(0.01, 0.02), seeds=(0,)) -> StudySpec:
    return StudySpec(name="grow", base=tiny_base(6, 3), variants=[{"optim.lr": lr} for lr in lrs], seeds=seeds,
                     resources=Resources(cpus=1), cohort_size=1, tags={"preset": "test"})


@pytest.mark.ray
def test_resume_adds_new_seeds_and_settings_and_refuses_a_changed_design(tmp_path, local_ray_cleanup):
    import ray

    from segdistill.study.runner import run_study

    df = run_study(_grid_spec(), results_root=tmp_path, progress="off")
    assert len(df) == 2
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "grow" / "trials").glob("*.parquet")}
    ray.shutdown()

    with pytest.raises(DesignChangedError, match=r"setting .*optim.lr: 0.02 -> 0.03|was removed"):
        run_study(_grid_spec(lrs=(0.01, 0.03)), results_root=tmp_path, resume=True, progress="off")
    assert not ray.is_initialized()  # refused before Ray starts

    df = run_study(_grid_spec(lrs=(0.01, 0.02, 0.04), seeds=(0, 1)), results_root=tmp_path, resume=True,
                   progress="off")
    assert len(df) == 6, df[["trial_id", "optim.lr", "run.seed"]]
    assert (df["status"] == "completed").all() and df["trial_id"].is_unique
    pairs = df[["optim.lr", "run.seed"]].apply(tuple, axis=1)
    assert pairs.is_unique and set(pairs) == {(lr, s) for lr in (0.01, 0.02, 0.04) for s in (0, 1)}
    for name, mtime in first.items():  # the finished configurations were not rerun
        assert (tmp_path / "grow" / "trials" / name).stat().st_mtime_ns == mtime
    design = json.loads((tmp_path / "grow" / "design.json").read_text())
    assert design["seeds"] == [0, 1] and len(design["parts"]) == 3


# =============================================================================================
# Signals to a running experiment script; two drivers at once
def _start_script(results: Path, zoo: Path, *extra: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, SCRIPT, "--preset", "smoke", "--results", str(results), "--zoo", str(zoo),
           "--iterations", ITERS, "--progress", "plain", *extra]
    return subprocess.Popen(cmd, env=ray_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for_checkpoint(results: Path, proc: subprocess.Popen, log: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((results / SMOKE_STUDY / "runs").glob("*/checkpoint/state.pt")):
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError("no trial checkpoint in time:\n" + log.read_text()[-3000:])


def _students(results: Path):
    df = read_trials(results, SMOKE_STUDY)
    return df[df["role"] != "teacher"]


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_and_sigint_stop_cleanly_and_resume_completes_every_configuration_once(tmp_path):
    results, zoo = tmp_path / "results", tmp_path / "zoo"
    # 1) SIGTERM to the driver alone (what `timeout` and schedulers send); meanwhile a second driver
    #    on the same study is refused at once, naming the running one
    log1 = tmp_path / "run1.log"
    proc = _start_script(results, zoo, log=log1)
    try:
        lock = results / f".{SMOKE_STUDY}.lock"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (lock.is_file() and str(proc.pid) in lock.read_text()):
            assert proc.poll() is None, log1.read_text()[-3000:]
            time.sleep(0.2)
        second = subprocess.run([sys.executable, SCRIPT, "--preset", "smoke", "--results", str(results), "--zoo",
                                 str(zoo), "--iterations", ITERS, "--resume"], env=ray_env(), capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"is already being run by pid {proc.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        _wait_for_checkpoint(results, proc, log1)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=120)
        took_term = time.monotonic() - t0
    finally:
        stop_group(proc)
    text = log1.read_text()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert took_term < 60, took_term
    assert "Traceback" not in text and "Tuner.restore" not in text and "Aborted" not in text, text[-3000:]
    m = re.search(r"continue from their checkpoints with:\n  (.+)\n", text)
    assert m and "--resume" in m.group(1), text[-2000:]
    st = _students(results)
    shown = st[["trial_id", "status", "iterations_done"]]
    assert set(st["status"]) <= {"completed", "interrupted"} and (st["status"] == "interrupted").any(), shown
    assert not ((st["status"] == "completed") & (st["iterations_done"] < int(ITERS))).any(), shown

    # 2) resume, then SIGINT to the whole process group (what a terminal's Ctrl-C sends)
    log2 = tmp_path / "run2.log"
    proc = _start_script(results, zoo, "--resume", log=log2)
    try:
        time.sleep(1)
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and "started" not in log2.read_text():
            assert proc.poll() is None, log2.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
        took_int = time.monotonic() - t0
    finally:
        stop_group(proc)
    text = log2.read_text()
    if rc != 0:  # (the resumed trials may have finished before the signal landed)
        assert rc == 128 + signal.SIGINT, text[-3000:]
        assert took_int < 60, took_int
        assert "Traceback" not in text and "Tuner.restore" not in text, text[-3000:]
        assert "--resume" in text
        st = _students(results)
        assert not ((st["status"] == "completed") & (st["iterations_done"] < int(ITERS))).any(), st

    # 3) resume to the end: every configuration exactly once, each with its full schedule
    out = subprocess.run([sys.executable, SCRIPT, "--preset", "smoke", "--results", str(results), "--zoo", str(zoo),
                          "--iterations", ITERS, "--progress", "off", "--resume"], env=ray_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    st = _students(results)
    assert len(st) == 4 and (st["status"] == "completed").all(), st[["trial_id", "status", "iterations_done"]]
    assert (st["iterations_done"] == int(ITERS)).all() and st["trial_id"].is_unique and st["setting"].is_unique
    assert "trials: 4 (completed: 4)" in out.stdout
    print(f"SIGTERM stop {took_term:.1f} s, SIGINT stop {took_int:.1f} s")


# =============================================================================================
# a stop signal inside a finaliser of a trial process: nothing printed; other errors still are
def test_stop_signal_inside_a_finaliser_prints_nothing_in_a_trial_process(monkeypatch):
    import gc

    from segdistill.study.interrupt import quiet_stop_in_worker

    seen: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_type))
    quiet_stop_in_worker()
    quiet_stop_in_worker()  # once per process: a second call does not wrap the hook again
    assert getattr(sys.unraisablehook, "segdistill_quiet_stop", False)

    class Finalised:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def __del__(self) -> None:
            raise self.exc

    for exc in (SystemExit(1), KeyboardInterrupt(), ValueError("a real bug")):
        Finalised(exc)  # dropped at once: __del__ raises, Python hands it to sys.unraisablehook
        gc.collect()
    assert seen == [ValueError]


def test_a_restored_study_callback_uses_the_drivers_live_plan():
    """Tune.restore unpickles the StudyCallback of an interrupted run, with the TrialContext of the
    code that started it (after an upgrade: an object without ``plans``); while the driver's context
    is live, the restored callback records through that instead (seen: 'could not record trial',
    AttributeError 'plans', on resuming a study interrupted under 5386d2f)."""
    import pickle
    from types import SimpleNamespace

    from segdistill.study.callbacks import StudyCallback, live_context

    stale = SimpleNamespace(study="s", storage_path="/r/s/ray/tune")  # an older version's context
    blob = pickle.dumps(StudyCallback(stale, release_pgs=False))
    live = SimpleNamespace(study="s", storage_path="/r/s/ray/tune", plans=())
    with live_context(live):
        assert pickle.loads(blob).ctx is live
        other = pickle.loads(pickle.dumps(StudyCallback(SimpleNamespace(study="t", storage_path="/r/t"), False)))
        assert other.ctx.study == "t" and not hasattr(other.ctx, "plans")  # another study's: left alone
    assert pickle.loads(blob).ctx == stale  # nothing live: the pickled context
