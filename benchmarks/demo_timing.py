"""Time the main job (``make demo``) from an empty results directory, phase by phase.

Runs what ``make demo`` runs -- ``experiments/ablation_beta.py --preset demo`` (here with
``--progress plain``), then ``python -m analysis`` on its results -- into a fresh directory, and
prints the wall time and CPU use of each phase:

- ``start-up``: Python imports and preflight, up to the moment Ray's GCS process appears;
- ``ray start``: Ray and the dashboard coming up, Tune setting up the teacher trial;
- ``teacher``: the zoo teacher's trial (from the study's ``started teacher ...`` line to its ``done``);
- ``hand-over``: the teacher's Tune experiment closing, cohort planning, the students' experiment opening;
- ``teacher cache``: from the first student trial's start until the teacher-logits cache file exists
  (only when the study uses the cache; the students' data and models are built meanwhile);
- ``students``: the rest of the student trials, up to the last one's ``done`` line;
- ``wrap-up``: the summary table, Ray shutting down, the process exiting;
- ``analysis``: ``python -m analysis --results R --out R/reports``.

The phase marks come from the study's own plain progress lines (:mod:`segdistill.study.progress`,
timestamped here as they arrive), the process tree and the cache directory; the grid is whatever the
preset runs. CPU use is sampled every ``--sample`` seconds with psutil: ``demo cores`` = CPU seconds
of the job's process tree (driver, Ray's processes, trial actors) over the phase's wall time;
``machine cores`` = all of the machine's busy CPU time over it (other work on the machine included,
so ``machine - demo`` is what else ran meanwhile). The last line is one JSON object.

    python benchmarks/demo_timing.py                     # the demo (minutes)
    python benchmarks/demo_timing.py --preset smoke      # the smoke preset (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("start-up", "ray start", "teacher", "hand-over", "teacher cache", "students", "wrap-up", "analysis")
# the plain view's event lines: "[  1m05s] started teacher deeplabv3_tiny_r101 on synthetic"
EVENT = re.compile(r"^\[\s*[0-9hms?]+\]\s+(started|done|stopped|FAILED)\s+(.*)$")


class TreeSampler(threading.Thread):
    """Samples the CPU time of a process and all its descendants (and the machine's) every ``period`` s.

    A process's last seen CPU time is kept after it exits, so the tree's total stays monotone
    (what a process used after its last sample, at most ``period`` s of it, is lost).
    """

    def __init__(self, pid: int, period: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.period = period
        self.seen: dict[tuple[int, float], float] = {}
        self.samples: list[tuple[float, float, float]] = []  # (monotonic time, tree CPU s, machine busy CPU s)
        self.first_seen: dict[str, float] = {}  # process name -> monotonic time it first appeared
        self.stop = threading.Event()

    @staticmethod
    def machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0) - getattr(t, "guest", 0.0) \
            - getattr(t, "guest_nice", 0.0)

    def sample(self) -> None:
        now = time.monotonic()
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                with p.oneshot():
                    key = (p.pid, p.create_time())
                    c = p.cpu_times()
                    self.seen[key] = c.user + c.system
                    self.first_seen.setdefault(p.name(), now)
            except psutil.Error:
                continue
        self.samples.append((now, sum(self.seen.values()), self.machine_busy()))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)
        self.sample()

    def at(self, t: float) -> tuple[float, float]:
        """(tree CPU s, machine busy CPU s) at the first sample at or after ``t`` (the last if none)."""
        for s in self.samples:
            if s[0] >= t:
                return s[1], s[2]
        return self.samples[-1][1], self.samples[-1][2]


def run_timed(cmd: list[str], *, env: dict[str, str], period: float, echo: bool,
              watch_dir: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``, timestamping each output line; returns its lines, exit code, times and sampler."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    sampler = TreeSampler(proc.pid, period)
    sampler.start()
    cache_seen: list[float] = []

    def watch() -> None:  # the teacher-logits cache: a file (not a lock, not a temporary) in watch_dir
        while proc.poll() is None and not cache_seen:
            if watch_dir is not None and watch_dir.is_dir() and any(
                    p.is_file() and not p.name.startswith(".") and ".tmp" not in p.name for p in watch_dir.iterdir()):
                cache_seen.append(time.monotonic())
                return
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    interrupted = False
    try:
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))
            if echo:
                print(f"  | {line.rstrip()}", flush=True)
        rc = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (timeout): stop the job (it shuts its Ray down), keep the marks
        interrupted = True
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    t1 = time.monotonic()
    sampler.stop.set()
    sampler.join()
    watcher.join(timeout=1)
    return {"rc": rc, "t0": t0, "t1": t1, "lines": lines, "sampler": sampler, "interrupted": interrupted,
            "cache_at": cache_seen[0] if cache_seen else None}


def study_marks(run: dict[str, Any]) -> dict[str, float]:
    """Monotonic times of the study's phase boundaries, from its plain progress lines and process tree."""
    marks: dict[str, float] = {"launch": run["t0"], "exit": run["t1"]}
    ray_at = [t for name, t in run["sampler"].first_seen.items() if name.startswith(("gcs_server", "raylet"))]
    if ray_at:
        marks["ray"] = min(ray_at)
    for t, line in run["lines"]:
        m = EVENT.match(line)
        if not m:
            continue
        word, what = m.groups()
        teacher = what.startswith("teacher ")
        if word == "started" and teacher:
            marks.setdefault("teacher_start", t)
        elif teacher:
            marks.setdefault("teacher_end", t)
        elif word == "started":
            marks.setdefault("students_start", t)
        else:
            marks["students_end"] = t  # the last finish line
    if run["cache_at"] is not None and "students_start" in marks:
        marks["cache"] = max(run["cache_at"], marks["students_start"])
    return marks


def phase_rows(marks: dict[str, float], sampler: TreeSampler, cores: int) -> list[dict[str, Any]]:
    """One row per phase whose two ends were seen: wall s, demo cores busy, machine cores busy."""
    order = [("start-up", "launch", "ray"), ("ray start", "ray", "teacher_start"),
             ("teacher", "teacher_start", "teacher_end"), ("hand-over", "teacher_end", "students_start"),
             ("teacher cache", "students_start", "cache"),
             ("students", "cache" if "cache" in marks else "students_start", "students_end"),
             ("wrap-up", "students_end", "exit")]
    rows = []
    for name, a, b in order:
        if a not in marks or b not in marks:
            continue
        rows.append(cpu_row(name, marks[a], marks[b], sampler, cores))
    return rows


def cpu_row(name: str, a: float, b: float, sampler: TreeSampler, cores: int) -> dict[str, Any]:
    wall = max(0.0, b - a)
    (tree0, mach0), (tree1, mach1) = sampler.at(a), sampler.at(b)
    busy = lambda x: round(x / wall, 2) if wall > 0.5 else None  # noqa: E731 - too short to say
    return {"phase": name, "wall_s": round(wall, 1), "demo_cpu_s": round(tree1 - tree0, 1),
            "demo_cores": busy(tree1 - tree0), "machine_cores": busy(mach1 - mach0), "cores": cores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", help="the ablation_beta preset (demo = make demo; smoke for CI)")
    ap.add_argument("--results", default=None, help="results directory; must be empty or absent "
                    "(default: a new temporary directory, removed afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the results directory")
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between CPU samples")
    ap.add_argument("--echo", action="store_true", help="show the job's own output as it runs")
    ap.add_argument("--no-analysis", action="store_true", help="skip the analysis step")
    a = ap.parse_args()
    if a.results:
        results = Path(a.results).resolve()
        if results.exists() and any(results.iterdir()):
            raise SystemExit(f"{results} is not empty: the demo is timed from an empty results directory")
    else:
        results = Path(tempfile.mkdtemp(prefix="demo_timing_"))
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "platform"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])])}
    env.pop("RAY_ADDRESS", None)  # a Ray of its own, as make demo starts
    cores = psutil.cpu_count() or 1
    load_before = os.getloadavg()
    print(f"timing ablation_beta --preset {a.preset} into {results} ({cores} cores, load average "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f})", flush=True)

    def on_term(*_: Any) -> None:  # once: `timeout` and a user may both send one
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    study = run_timed([sys.executable, "experiments/ablation_beta.py", "--preset", a.preset, "--results",
                       str(results), "--progress", "plain"], env=env, period=a.sample, echo=a.echo,
                      watch_dir=results / "_zoo" / "_logits")
    failed = study["rc"] != 0 or study["interrupted"]
    if failed:
        print("\n".join(line for _, line in study["lines"][-40:]), file=sys.stderr)
    marks = study_marks(study)
    missing = [m for m in ("ray", "teacher_start", "teacher_end", "students_start", "students_end") if m not in marks]
    if failed:  # what was seen before it ended: the unfinished phase runs to the exit
        for end, start in (("ray", "launch"), ("teacher_start", "ray"), ("teacher_end", "teacher_start"),
                           ("students_start", "teacher_end"), ("students_end", "students_start")):
            if end not in marks and start in marks:
                marks[end] = study["t1"]
                break
    rows = phase_rows(marks, study["sampler"], cores)
    total = cpu_row("study", study["t0"], study["t1"], study["sampler"], cores)
    if not a.no_analysis and not failed:
        ana = run_timed([sys.executable, "-m", "analysis", "--results", str(results), "--out", str(results / "reports")],
                        env=env, period=a.sample, echo=a.echo)
        if ana["rc"] != 0:
            print("\n".join(line for _, line in ana["lines"][-40:]), file=sys.stderr)
            raise SystemExit(f"the analysis exited with {ana['rc']}")
        rows.append(cpu_row("analysis", ana["t0"], ana["t1"], ana["sampler"], cores))
    load_after = os.getloadavg()
    wall = sum(r["wall_s"] for r in rows if r["phase"] in ("analysis",)) + total["wall_s"]
    print(f"\n{'phase':<14} {'wall s':>8} {'demo CPU s':>11} {'demo cores':>11} {'machine cores':>14}")
    for r in [*rows, {**total, "phase": "study (all)"}]:
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        print(f"{r['phase']:<14} {r['wall_s']:8.1f} {r['demo_cpu_s']:11.1f} {fmt(r['demo_cores']):>11} "
              f"{fmt(r['machine_cores']):>14}")
    print(f"total (study + analysis): {wall:.1f} s = {wall / 60:.1f} min on {cores} cores; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    if missing:
        print(f"(phase marks not seen: {', '.join(missing)}; their phases are left out)")
    if failed:
        print(f"INCOMPLETE: the study {'was interrupted' if study['interrupted'] else 'failed'} (rc {study['rc']}); "
              "the last phase shown ran until then")
    out = {"demo_timing": {"preset": a.preset, "cores": cores, "total_s": round(wall, 1),
                           "study_s": total["wall_s"], "study_demo_cores": total["demo_cores"],
                           "study_machine_cores": total["machine_cores"], "phases": rows,
                           "loadavg_before": [round(x, 2) for x in load_before],
                           "loadavg_after": [round(x, 2) for x in load_after], "marks_missing": missing,
                           "complete": not failed, "rc": study["rc"],
                           "results": str(results) if a.keep or a.results else None}}
    if not a.keep and not a.results:
        shutil.rmtree(results, ignore_errors=True)
    print(json.dumps(out))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
