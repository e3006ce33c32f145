"""The driver's Tune callback: record the trials Tune stopped or that failed; free their placement groups.

A trial that finishes writes its own Parquet record (:mod:`segdistill.study.trial`). A trial that
ASHA stops, or that fails, never returns from ``fit``, so the driver records it here, each of its
configurations from its last checkpoint (:func:`segdistill.study.records.record_from_state`), with
status ``early_stopped``, ``failed`` or ``interrupted`` and the iterations it actually reached. The
same bookkeeping reconciles a resumed or interrupted study (:func:`reconcile`), so a record lost to a
driver crash is written on the next run.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

from ray.tune import Callback

from .interrupt import interrupted
from .plan import TrialContext, trial_members
from .records import INTERRUPTED, record_from_state, recorded
from .runtime import release_placement_group

log = logging.getLogger(__name__)


def record_trial(ctx: TrialContext, trial_id: str, config: Mapping[str, Any], *, status: str,
                 checkpoint_path: str | None = None, last_result: Mapping[str, Any] | None = None,
                 error: str | None = None) -> None:
    """Record every configuration of Tune trial ``trial_id`` that has no record yet. A cohort's
    members each get their own status, decided from their own checkpoints (a cohort stopped mid-way
    can hold a finished member next to one that never started); Tune's checkpoint and last result
    are the trial's, so they only serve a trial of one configuration."""
    members = trial_members(ctx, trial_id, config)
    if len(members) == 1 and members[0].index is None:
        record_from_state(ctx, members[0], trial_id, status=status, checkpoint_path=checkpoint_path,
                          last_result=last_result, error=error)
        return
    node = {k: v for k, v in (last_result or {}).items() if k == "node_id"}
    for member in members:
        record_from_state(ctx, member, trial_id, status=status, error=error, last_result=node)


def error_text(trial: Any) -> str:
    """The trial's error: Tune's error file (the traceback) or the exception's text."""
    path = getattr(trial, "error_file", None)
    if path and Path(str(path)).is_file():
        try:
            return Path(str(path)).read_text(errors="replace")
        except OSError:
            pass
    get = getattr(trial, "get_error", None)
    if callable(get):
        with contextlib.suppress(Exception):
            return str(get())
    return str(path or "error")


def terminal_status(last_result: Mapping[str, Any], errored: bool) -> str:
    """The status of a trial Tune ended without the trial recording itself: ``failed``, ``interrupted``
    (the driver was signalled), ``early_stopped`` (stopped before its last iteration) or
    ``completed`` (only when its last result reached its last iteration)."""
    if interrupted() is not None:
        return INTERRUPTED
    if errored:
        return "failed"
    it, total = last_result.get("iteration"), last_result.get("total_iterations")
    if it is not None and total is not None and int(it) >= int(total):
        return "completed"
    if it is not None and total is not None:
        return "early_stopped"
    return INTERRUPTED  # no iteration known: nothing says it finished


_LIVE: dict[tuple[str, str], TrialContext] = {}


def _context_key(ctx: Any) -> tuple[str, str]:
    return str(getattr(ctx, "study", "")), str(getattr(ctx, "storage_path", ""))


@contextlib.contextmanager
def live_context(ctx: TrialContext):
    """While open, ``ctx`` (this driver's plan) is the context of every StudyCallback of its study,
    also of those ``Tuner.restore`` unpickles from an earlier run, whose pickled context may come
    from another version of this code (a study interrupted before an upgrade, then resumed)."""
    key = _context_key(ctx)
    _LIVE[key] = ctx
    try:
        yield ctx
    finally:
        if _LIVE.get(key) is ctx:
            del _LIVE[key]


class StudyCallback(Callback):
    """Tune callback on the driver: records stopped/failed trials, releases their placement groups."""

    def __init__(self, ctx: TrialContext, release_pgs: bool) -> None:
        self.ctx = ctx
        self.release_pgs = release_pgs
        self.released: list[str] = []

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled by ``Tuner.restore``: the driver's live context replaces the pickled one."""
        self.__dict__.update(state)
        self.ctx = _LIVE.get(_context_key(self.ctx), self.ctx)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        started_trials(self.ctx)[trial.trial_id] = trial

    def _finish(self, trial: Any, errored: bool) -> None:
        last = dict(trial.last_result or {})
        if self.release_pgs and last.get("pg_id"):
            if release_placement_group(str(last["pg_id"])):
                self.released.append(str(last["pg_id"]))
        ckpt = getattr(trial, "checkpoint", None)
        err = error_text(trial) if errored else None
        try:
            record_trial(self.ctx, trial.trial_id, dict(trial.config or {}), status=terminal_status(last, errored),
                         checkpoint_path=getattr(ckpt, "path", None), last_result=last, error=err)
        except Exception:  # noqa: BLE001 - bookkeeping must not kill the study; reconcile retries
            log.exception("could not record trial %s", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)


_STARTED: dict[tuple[str, str], dict[str, Any]] = {}


def started_trials(ctx: TrialContext) -> dict[str, Any]:
    """The Tune trials of ``ctx``'s study this driver has seen start (trial id -> Trial): what the
    driver records as interrupted when Tune itself could not end cleanly after a signal."""
    return _STARTED.setdefault((ctx.study, ctx.storage_path), {})


def started_results(ctx: TrialContext) -> list[Any]:
    """:func:`started_trials` in the shape :func:`reconcile` reads (a ResultGrid's results)."""
    out = []
    for tid, trial in started_trials(ctx).items():
        ckpt = getattr(trial, "checkpoint", None)
        out.append(SimpleNamespace(metrics={**dict(getattr(trial, "last_result", None) or {}), "trial_id": tid},
                                   path=str(getattr(trial, "path", None) or tid), config=dict(trial.config or {}),
                                   error=None, checkpoint=ckpt))
    return out


def reconcile(ctx: TrialContext, result_grid: Any) -> int:
    """Record every trial of ``result_grid`` that has no Parquet record yet; returns how many."""
    n = 0
    for res in result_grid:
        metrics = dict(res.metrics or {})
        trial_id = metrics.get("trial_id") or Path(str(res.path)).name
        cfg_dict = dict(res.config or {})
        try:
            members = trial_members(ctx, trial_id, cfg_dict)
        except Exception:  # noqa: BLE001 - not a configuration of this study
            continue
        if all(recorded(ctx, m.record_id) for m in members):
            continue
        errored = res.error is not None
        record_trial(ctx, trial_id, cfg_dict, status=terminal_status(metrics, errored),
                     checkpoint_path=getattr(res.checkpoint, "path", None), last_result=metrics,
                     error=str(res.error) if errored else None)
        n += 1
    return n
