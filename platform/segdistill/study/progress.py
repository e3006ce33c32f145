"""What a researcher sees while a study runs: one live view of the teacher phase and every trial.

Trials report to Tune at each evaluation and, in between, progress results (iteration, loss terms;
:class:`segdistill.study.trial.ProgressReports`); cohort trials report for each member. Tune hands
every result to the driver's callbacks, where :class:`ProgressCallback` feeds a :class:`StudyProgress`
(plain data: one :class:`Member` per configuration, its iteration, loss, last and best val mIoU,
status and failure reason; done / failed / total and an ETA). A view shows it:

- :class:`LiveView` (stdout is a terminal): a ``rich`` live display, redrawn twice a second, with a
  header (phase, done / failed / running / pending of total, elapsed, ETA), the running trials with
  progress bars, the failures with their reason and the best val mIoU so far per setting. Anything
  else printed meanwhile (warnings, Ray's forwarded worker output) scrolls above it.
- :class:`PlainView` (stdout is a file or pipe, e.g. CI logs): a line per trial start, finish and
  failure, and every ``interval`` seconds a summary line plus one line per running trial.

ETA: the iterations left (running members' and, for trials not started yet, the mean iterations
of the study's configurations) over the summed iteration rates of the running members, measured
since each started in this session. Before any rate is known it reads ``?``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, Mapping

import pandas as pd
from ray.tune import Callback

from ..results import part_path, read_trials
from .callbacks import error_text
from .names import SEED_KEY, member_label, searched_keys, trial_label
from .plan import TrialContext, TrialMember, trial_members
from .records import failure_summary
from .trial import EVAL, MEMBER_FAILED, PROGRESS, REPORT_KEY

MODES = ("auto", "live", "plain", "off")
TEACHERS, TRIALS = "teachers", "trials"  # the phases of a study
log = logging.getLogger(__name__)
PENDING, RUNNING, DONE, STOPPED, FAILED = "pending", "running", "done", "stopped early", "failed"


def fmt_duration(seconds: float | None) -> str:
    """``3725`` -> ``"1h02m"``, ``125`` -> ``"2m05s"``, ``7`` -> ``"7s"``; None/inf -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _num(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def _int(value: Any, default: int = 0) -> int:
    x = _num(value)
    return int(x) if math.isfinite(x) else default


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


@dataclass
class Member:
    """One configuration of the study (a setting with one seed), as the driver last heard of it."""

    key: str  # record id: the trial id, or "<trial id>_<j>" for member j of a cohort trial
    label: str  # "beta=0.3 seed 1"
    setting: str  # "beta=0.3": what "best so far per setting" groups by
    total: int
    iteration: int = 0
    loss: float = math.nan
    val_miou: float = math.nan
    best_miou: float = math.nan
    final_miou: float = math.nan
    status: str = RUNNING
    reason: str = ""
    failed_at: int | None = None
    started: float = field(default_factory=time.monotonic)
    start_iteration: int | None = None  # the first iteration heard of in this session (resumed runs start late)
    rate_t0: float | None = None
    finished: float | None = None

    def rate(self, now: float) -> float:
        """Iterations per second since the first report heard of in this session (NaN if unknown)."""
        if self.start_iteration is None or self.rate_t0 is None or now <= self.rate_t0:
            return math.nan
        done = self.iteration - self.start_iteration
        return done / (now - self.rate_t0) if done > 0 else math.nan

    def eta(self, now: float) -> float:
        r = self.rate(now)
        return (self.total - self.iteration) / r if r > 0 else math.nan


class StudyProgress:
    """The live state of one study (thread-safe: Tune's callbacks write, a view's thread reads)."""

    def __init__(self, study: str) -> None:
        self.study = study
        self.phase = ""
        self.planned = 0  # configurations this phase will run
        self.iterations = 0  # iterations of one configuration (for the ETA of those not started)
        self.members: dict[str, Member] = {}
        self.t0 = time.monotonic()
        self.phase_t0 = self.t0
        self.lock = threading.RLock()
        self.events: list[str] = []  # lines for the plain view (starts, finishes, failures)
        self.history: list[str] = []  # one line per finished phase (the teachers), for the live view

    # -- writers (Tune callbacks) ---------------------------------------------------------------
    def start_phase(self, phase: str, planned: int, iterations: int) -> None:
        with self.lock:
            if self.phase and self.members:  # what the previous phase came to, kept on screen
                done = [m for m in self.members.values() if m.status in (DONE, STOPPED)]
                failed = [m for m in self.members.values() if m.status == FAILED]
                what = "; ".join(f"{m.label}: val mIoU {_fmt(m.val_miou)}" for m in done[:4])
                self.history.append(f"{self.phase}: {len(done)} done, {len(failed)} failed in "
                                    f"{fmt_duration(time.monotonic() - self.phase_t0)}" + (f" ({what})" if what else ""))
            self.phase, self.planned, self.iterations = phase, int(planned), int(iterations)
            self.members = {}
            self.phase_t0 = time.monotonic()

    def member_started(self, key: str, label: str, setting: str, total: int) -> Member:
        with self.lock:
            m = self.members.get(key)
            if m is None or m.status != RUNNING:
                m = Member(key, label, setting, int(total))
                self.members[key] = m
                self.events.append(f"started {label}")
            return m

    def result(self, key: str, result: Mapping[str, Any]) -> None:
        """A Tune result of the member ``key``: progress, evaluation or failure."""
        with self.lock:
            m = self.members.get(key)
            if m is None:
                return
            kind = result.get(REPORT_KEY, EVAL)
            now = time.monotonic()
            it = result.get("iteration")
            if it is not None:
                it = int(it)
                if m.start_iteration is None:
                    # the rate counts from the first report heard of: a resumed run starts at its
                    # checkpoint, and start-up (data, teacher cache) is not training speed
                    m.start_iteration, m.rate_t0 = it, now
                m.iteration = max(m.iteration, it) if kind != MEMBER_FAILED else it
            if result.get("total_iterations"):
                m.total = int(result["total_iterations"])
            if "loss_total" in result:
                m.loss = _num(result["loss_total"])
            if kind == EVAL:
                m.val_miou = _num(result.get("val_miou"))
                best = _num(result.get("best_miou"))
                if math.isfinite(best):
                    m.best_miou = best
            elif kind == MEMBER_FAILED:
                self._fail(m, str(result.get("error_reason", "")), result.get("iteration"), now)

    def _fail(self, m: Member, reason: str, at: Any, now: float) -> None:
        if m.status == FAILED:
            return
        m.status, m.reason, m.finished = FAILED, reason or "unknown error", now
        m.failed_at = int(at) if at is not None else None
        where = f" at iteration {m.failed_at}" if m.failed_at is not None else ""
        self.events.append(f"FAILED {m.label}{where}: {m.reason}")

    def member_finished(self, key: str, row: Mapping[str, Any] | None, *, errored: bool = False,
                        error: str = "") -> None:
        """The member's trial ended; ``row`` is its Parquet record (None if there is none)."""
        with self.lock:
            m = self.members.get(key)
            if m is None:
                return
            now = time.monotonic()
            status = str((row or {}).get("status", "failed" if errored else "completed"))
            if row:
                done_its = _num(row.get("iterations_done"))
                if math.isfinite(done_its):
                    m.iteration = int(done_its)
                for attr, col in (("final_miou", "final_miou"), ("best_miou", "best_miou")):
                    v = _num(row.get(col))
                    if math.isfinite(v):
                        setattr(m, attr, v)
                if math.isfinite(m.final_miou):
                    m.val_miou = m.final_miou
            if status == "failed":
                reason = str((row or {}).get("error_reason") or "") or error
                at = (row or {}).get("failed_at_iteration")
                at = None if at is None or _num(at) < 0 or not math.isfinite(_num(at)) else int(_num(at))
                self._fail(m, reason, at if at is not None else m.failed_at, now)
                return
            if m.status != RUNNING or status == "interrupted":  # stopped by a signal: not done
                return
            m.status = STOPPED if status == "early_stopped" else DONE
            m.finished = now
            took = fmt_duration(now - m.started)
            word = "stopped" if m.status == STOPPED else "done"
            self.events.append(f"{word} {m.label}: val mIoU {_fmt(m.val_miou)} (best {_fmt(m.best_miou)}), "
                               f"{m.iteration}/{m.total} it, {took}")

    # -- readers (views) ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything a view shows, computed under the lock."""
        with self.lock:
            now = time.monotonic()
            members = list(self.members.values())
            running = [m for m in members if m.status == RUNNING]
            done = [m for m in members if m.status in (DONE, STOPPED)]
            failed = [m for m in members if m.status == FAILED]
            pending = max(0, self.planned - len(members))
            rates = [r for r in (m.rate(now) for m in running) if r > 0]
            left = sum(max(0, m.total - m.iteration) for m in running)
            known = [m.total for m in members] or [self.iterations]
            left += pending * (sum(known) / len(known) if known else 0)
            eta = left / sum(rates) if rates and left else (0.0 if not running and not pending else math.nan)
            best: dict[str, dict[str, Any]] = {}
            for m in members:
                b = best.setdefault(m.setting, {"setting": m.setting, "best": math.nan, "label": "", "done": 0,
                                                "runs": 0})
                b["runs"] += 1
                b["done"] += m.status in (DONE, STOPPED)
                v = m.best_miou
                if math.isfinite(v) and not (v <= b["best"]):
                    b["best"], b["label"] = v, m.label
            return {"study": self.study, "phase": self.phase, "planned": max(self.planned, len(members)),
                    "history": list(self.history),
                    "running": running, "done": done, "failed": failed, "pending": pending,
                    "elapsed": now - self.t0, "phase_elapsed": now - self.phase_t0, "eta": eta, "now": now,
                    "best": sorted(best.values(), key=lambda b: -b["best"] if math.isfinite(b["best"]) else math.inf)}

    def take_events(self) -> list[str]:
        with self.lock:
            out, self.events = self.events, []
            return out


# -- the Tune callback -------------------------------------------------------------------------
def _read_row(ctx: TrialContext, record_id: str) -> dict[str, Any] | None:
    path = part_path(ctx.results_root, ctx.study, "trials", record_id)
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path).iloc[0].to_dict()
    except Exception:  # noqa: BLE001 - a view never stops a study
        return None


_ACTIVE: dict[str, tuple[TrialContext, StudyProgress, "View", str]] = {}
"""Live monitors by key. Tune pickles its callbacks into the experiment (``tuner.pkl``) and a resumed
study gets those unpickled copies back, so a callback holds only a key and finds this session's
progress state and view here."""


class ProgressCallback(Callback):
    """Tune callback on the driver: every trial's start, results and end into a StudyProgress.

    Put it after :class:`~segdistill.study.callbacks.StudyCallback`, which writes the records of
    stopped and failed trials that this callback reads when a trial ends."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._members: dict[str, list[TrialMember]] = {}  # trial id -> its configurations

    def _keys(self, trial: Any, ctx: TrialContext) -> list[TrialMember]:
        """The trial's configurations (none if its config is not one of this study's plans)."""
        if trial.trial_id not in self._members:
            try:
                self._members[trial.trial_id] = trial_members(ctx, trial.trial_id, dict(trial.config or {}))
            except Exception:  # a view never stops a study
                log.debug("progress view: trial %s", trial.trial_id, exc_info=True)
                self._members[trial.trial_id] = []
        return self._members[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        hub = _ACTIVE.get(self.key)
        if hub is None:
            return
        ctx, progress, view, phase = hub
        try:
            searched = searched_keys(trial)
            for member in self._keys(trial, ctx):
                cfg = member.plan.config
                if phase == TEACHERS:  # the zoo's teacher trials: architecture and dataset
                    label = setting = f"teacher {cfg.model.arch} on {cfg.data.name}"
                else:
                    setting = member.plan.setting
                    # an Optuna trial is named by its suggested values
                    label = trial_label(trial) if searched else member_label(setting, member.plan.seed)
                progress.member_started(member.record_id, label, setting, member.iterations)
        except Exception:  # noqa: BLE001 - a view never stops a study
            log.debug("progress view: trial %s", trial.trial_id, exc_info=True)
        view.tick()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        hub = _ACTIVE.get(self.key)
        if hub is None:
            return
        keys = self._keys(trial, hub[0])
        kind = result.get(REPORT_KEY, EVAL)
        j = result.get("member")
        member = keys[int(j)] if j is not None and int(j) < len(keys) else keys[0] if keys else None
        if member is not None and kind in (EVAL, PROGRESS, MEMBER_FAILED):
            hub[1].result(member.record_id, result)
        hub[2].tick()

    def _end(self, trial: Any, errored: bool) -> None:
        hub = _ACTIVE.get(self.key)
        if hub is None:
            return
        ctx, progress, view, _ = hub
        error = ""
        if errored:
            error = failure_summary(error_text(trial))[0]
        for member in self._keys(trial, ctx):
            progress.member_finished(member.record_id, _read_row(ctx, member.record_id), errored=errored, error=error)
        view.tick()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, errored=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        hub = _ACTIVE.get(self.key)
        if hub is not None:
            hub[2].tick()


def recorded(ctx: TrialContext) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(record id, label, setting, row) of the study's students already in Parquet (a resumed study),
    each named by the setting whose flat keys it matches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            df = read_trials(ctx.results_root, ctx.study)
        except Exception:  # noqa: BLE001 - nothing recorded yet
            return []
    if df.empty:
        return []
    settings = {p.setting: p.overrides for p in ctx.plans}
    out = []
    for row in df.to_dict("records"):
        if row.get("role") == "teacher" or row.get("status") == "interrupted":  # interrupted: runs again
            continue
        setting = str(row.get("trial_id"))
        for name, overrides in settings.items():
            if all(_same(row.get(k), v) for k, v in overrides.items() if k != SEED_KEY):
                setting = name
                break
        out.append((str(row["trial_id"]), member_label(setting, _int(row.get("run.seed"))), setting, row))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        if not math.isfinite(_num(b)):
            return str(a) == str(b)
        return math.isclose(_num(a), _num(b), rel_tol=1e-12, abs_tol=0.0)
    return str(a) == str(b)


# -- views ---------------------------------------------------------------------------------------
class View:
    """Shows a StudyProgress; ``tick`` is called from Tune's loop (often), ``close`` once at the end."""

    def __init__(self, progress: StudyProgress) -> None:
        self.progress = progress

    def start(self) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...


class PlainView(View):
    """Plain lines for logs: events as they happen, a summary every ``interval`` seconds."""

    def __init__(self, progress: StudyProgress, stream: IO[str] | None = None, interval: float = 30.0) -> None:
        super().__init__(progress)
        self.stream = stream
        self.interval = float(interval)
        self._last = -math.inf
        self._lock = threading.Lock()

    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    def _print(self, text: str) -> None:
        s = self.progress.snapshot()
        out = self._out()
        out.write(f"[{fmt_duration(s['elapsed']):>6}] {text}\n")
        out.flush()

    def tick(self, force: bool = False) -> None:
        with self._lock:
            for line in self.progress.take_events():
                self._print(line)
            now = time.monotonic()
            if not force and now - self._last < self.interval:
                return
            self._last = now
            s = self.progress.snapshot()
            if not s["phase"]:
                return
            for line in summary_lines(s):
                self._print(line)

    def close(self) -> None:
        self.tick(force=True)
        s = self.progress.snapshot()
        if s["best"] and s["phase"] != "teachers":
            self._print("best val mIoU so far per setting: " + "; ".join(
                f"{b['setting']} {_fmt(b['best'])} ({b['done']}/{b['runs']} done)" for b in s["best"]))


def summary_lines(s: Mapping[str, Any]) -> list[str]:
    """The plain view's periodic block: one line for the phase, one per running configuration."""
    done, failed, running = len(s["done"]), len(s["failed"]), len(s["running"])
    stopped = sum(1 for m in s["done"] if m.status == STOPPED)
    head = (f"{s['study']} {s['phase']}: {done}/{s['planned']} done"
            + (f" ({stopped} stopped early)" if stopped else "")
            + f", {failed} failed, {running} running, {s['pending']} pending; ETA {fmt_duration(s['eta'])}")
    lines = [head]
    for m in s["running"]:
        lines.append(f"  {m.label}: {m.iteration}/{m.total} it, loss {_fmt(m.loss, 3)}, val mIoU {_fmt(m.val_miou)} "
                     f"(best {_fmt(m.best_miou)}), ETA {fmt_duration(m.eta(s['now']))}")
    return lines


class LiveView(View):
    """A ``rich`` live display of the study (terminal only)."""

    MAX_ROWS = 16

    def __init__(self, progress: StudyProgress, console: Any = None) -> None:
        super().__init__(progress)
        from rich.console import Console

        self.console = console or Console()
        self.live = None

    def start(self) -> None:
        from rich.live import Live

        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2,
                         redirect_stdout=True, redirect_stderr=True, transient=False)
        self.live.start()

    def close(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None

    def render(self) -> Any:
        return render(self.progress.snapshot())


def render(s: Mapping[str, Any]) -> Any:
    """The live display of a snapshot: header, running trials, failures, best so far per setting."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    done, failed, running = len(s["done"]), len(s["failed"]), len(s["running"])
    stopped = sum(1 for m in s["done"] if m.status == STOPPED)
    head = Text()
    head.append(f"{s['study']}", style="bold")
    head.append(f"  {s['phase'] or 'starting'}  ")
    head.append(f"{done}/{s['planned']} done", style="green")
    if stopped:
        head.append(f" ({stopped} stopped early)")
    head.append(", ")
    head.append(f"{failed} failed", style="red" if failed else "")
    head.append(f", {running} running, {s['pending']} pending   elapsed {fmt_duration(s['elapsed'])}   "
                f"ETA {fmt_duration(s['eta'])}")
    parts: list[Any] = [head] + [Text(f"  {line}", style="dim") for line in s.get("history", [])]
    if s["running"]:
        t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
        for name, justify in (("running", "left"), ("progress", "left"), ("it", "right"), ("loss", "right"),
                              ("val mIoU", "right"), ("best", "right"), ("ETA", "right")):
            t.add_column(name, justify=justify, no_wrap=True)
        rows = sorted(s["running"], key=lambda m: m.label)
        for m in rows[:LiveView.MAX_ROWS]:
            t.add_row(m.label, ProgressBar(total=max(1, m.total), completed=m.iteration, width=24),
                      f"{m.iteration}/{m.total}", _fmt(m.loss, 3), _fmt(m.val_miou), _fmt(m.best_miou),
                      fmt_duration(m.eta(s["now"])))
        if len(rows) > LiveView.MAX_ROWS:
            t.add_row(f"... and {len(rows) - LiveView.MAX_ROWS} more", "", "", "", "", "", "")
        parts.append(t)
    if s["failed"]:
        t = Table(box=None, show_edge=False, header_style="bold red")
        t.add_column("failed", no_wrap=True)
        t.add_column("at it", justify="right")
        t.add_column("reason", overflow="fold")
        for m in s["failed"][-8:]:
            t.add_row(m.label, "" if m.failed_at is None else str(m.failed_at), m.reason[:300])
        parts.append(t)
    if s["best"] and s["phase"] != "teachers":
        t = Table(box=None, show_edge=False, header_style="bold")
        t.add_column("setting", no_wrap=True)
        t.add_column("done", justify="right")
        t.add_column("best val mIoU so far", justify="right")
        t.add_column("by", no_wrap=True)
        for b in s["best"][:LiveView.MAX_ROWS]:
            t.add_row(b["setting"], f"{b['done']}/{b['runs']}", _fmt(b["best"]), b["label"])
        parts.append(t)
    return Group(*parts)


def make_view(progress: StudyProgress, mode: str = "auto", *, stream: IO[str] | None = None,
              interval: float = 30.0) -> View:
    """``auto``: live on a terminal, plain lines otherwise; ``live``, ``plain`` or ``off``."""
    if mode not in MODES:
        raise ValueError(f"progress must be one of {MODES}, got {mode!r}")
    out = stream if stream is not None else sys.stdout
    if mode == "auto":
        mode = "live" if getattr(out, "isatty", lambda: False)() else "plain"
    if mode == "off":
        return View(progress)
    if mode == "plain":
        return PlainView(progress, stream, interval)
    from rich.console import Console

    return LiveView(progress, Console(file=stream) if stream is not None else None)


INTERVAL_ENV = "SEGDISTILL_PROGRESS_INTERVAL"  # seconds between the plain view's summaries (default 30)


class StudyMonitor:
    """A study's progress state and its view, for the whole of ``run_study`` (teachers, then trials).
    ``interval``: seconds between the plain view's summaries (default: ``$SEGDISTILL_PROGRESS_INTERVAL``
    or 30)."""

    def __init__(self, study: str, mode: str = "auto", *, stream: IO[str] | None = None,
                 interval: float | None = None) -> None:
        self.study = study
        self.progress = StudyProgress(study)
        if interval is None:
            try:
                interval = float(os.environ.get(INTERVAL_ENV, "30"))
            except ValueError:
                raise ValueError(f"{INTERVAL_ENV}={os.environ[INTERVAL_ENV]!r} must be a number of seconds") from None
        self.view = make_view(self.progress, mode, stream=stream, interval=interval)

    def __enter__(self) -> "StudyMonitor":
        self.view.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for key in [k for k, hub in _ACTIVE.items() if hub[1] is self.progress]:
            _ACTIVE.pop(key, None)
        self.view.close()

    def attach(self, key: str, ctx: TrialContext, phase: str, planned: int, iterations: int) -> None:
        """Route the :class:`ProgressCallback` of key ``key`` (a Tune experiment's directory) here,
        for one phase (:data:`TEACHERS` or :data:`TRIALS`) of ``planned`` configurations of
        ``iterations`` each. In the trials phase, configurations a resumed study already recorded
        count as done (or failed) from the start."""
        self.progress.start_phase(phase, planned, iterations)
        if phase == TRIALS:
            for key_, label, setting, row in recorded(ctx):
                self.progress.member_started(key_, label, setting, _int(row.get("optim.iterations")))
                self.progress.member_finished(key_, row)
            self.progress.take_events()  # not news
        _ACTIVE[key] = (ctx, self.progress, self.view, phase)
        self.view.tick()

    def detach(self, key: str) -> None:
        _ACTIVE.pop(key, None)
        self.view.tick()


__all__ = ["MODES", "Member", "StudyProgress", "ProgressCallback", "PlainView", "LiveView", "StudyMonitor",
           "make_view", "render", "summary_lines", "fmt_duration"]
