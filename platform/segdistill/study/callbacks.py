"""Driver-side bookkeeping: record trials Tune stopped or that failed; free their placement groups.

A trial that finishes writes its own Parquet record (:mod:`segdistill.study.trial`). A trial that
ASHA stops, or that fails, never returns from ``fit``, so the driver records it here from the last
checkpoint the trial wrote (``state.pt`` holds curves, evaluations and the last per-class table),
with status ``early_stopped`` or ``failed`` and the iterations it actually reached. The same
function reconciles a resumed study (:func:`reconcile`), so a record lost to a driver crash is
written on the next run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

from ray.tune import Callback

from ..results import part_path, record_from_fit, write_trial
from .cohort_trial import MEMBERS_KEY, member_configs, member_id
from .interrupt import interrupted
from .runtime import release_placement_group
from .trial import CHECKPOINT_DIR, STATE_FILE, TrialContext, count_attempts, trial_config

log = logging.getLogger(__name__)


def _state_candidates(ctx: TrialContext, out_dir: str, checkpoint_path: str | None, last_result: Mapping[str, Any]) -> list[Path]:
    """The checkpoint Tune saw last (inline: the trial's checkpoint; train: ``checkpoint_path``)
    first, the trial's own out_dir last: a stopped trial may have written one more evaluation
    after its last report, which the scheduler and Optuna never saw."""
    paths = [Path(str(p)) / STATE_FILE for p in (checkpoint_path, last_result.get("checkpoint_path")) if p]
    return paths + [Path(out_dir) / CHECKPOINT_DIR / STATE_FILE]


def _cut_to_reported(state: dict[str, Any], reported: Any) -> dict[str, Any]:
    """Drop evaluations after the last reported iteration (the out_dir fallback can be newer)."""
    if not state or reported is None or int(state.get("iteration", 0)) <= int(reported):
        return state
    cut = int(reported)
    evals = [e for e in state.get("evals", []) if int(e.get("iteration", 0)) <= cut]
    state = dict(state)
    state["iteration"] = cut
    state["evals"] = evals
    state["curves"] = [c for c in state.get("curves", []) if int(c.get("iteration", 0)) <= cut]
    if evals:
        state["best_miou"] = max(float(e.get("val/miou", float("-inf"))) for e in evals)
        last = dict(evals[-1])
        last["per_class"] = []  # only the newest evaluation's per-class table is kept in state.pt
        state["last_eval"] = last
    return state


def record_from_state(ctx: TrialContext, config: Mapping[str, Any], trial_id: str, *, status: str,
                      checkpoint_path: str | None = None, last_result: Mapping[str, Any] | None = None,
                      error: str | None = None, extra_tags: Mapping[str, Any] | None = None) -> None:
    """Write the Parquet record of a trial that did not return from ``fit`` (of each unrecorded
    member, for a cohort trial); ``extra_tags`` are added to its tags."""
    import torch

    if MEMBERS_KEY in config:
        # each member's status is its own: decided from its own checkpoint below (a cohort stopped
        # mid-way can hold a finished member next to one that never started)
        for j, member in enumerate(member_configs(config)):
            record_from_state(ctx, member, member_id(trial_id, j), status=status, error=error,
                              last_result={k: v for k, v in (last_result or {}).items() if k == "node_id"})
        return

    from ..models import build_model, count_flops, count_params
    from ..train import FitResult

    last_result = dict(last_result or {})
    cfg, tags, record_id = trial_config(ctx, config, trial_id)
    if recorded(ctx, record_id):
        return  # the trial recorded itself
    state: dict[str, Any] = {}
    for path in _state_candidates(ctx, cfg.run.out_dir, checkpoint_path, last_result):
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
                break
            except Exception as exc:  # noqa: BLE001 - a torn file: try the next candidate
                log.warning("could not read %s: %s", path, exc)
    state = _cut_to_reported(state, last_result.get("iteration"))
    last = state.get("last_eval", {}) or {}
    num_classes = int(state.get("num_classes", cfg.data.num_classes))
    try:
        params = count_params(build_model(cfg.model.arch, num_classes, output_stride=cfg.model.output_stride, aux=cfg.model.aux))
    except Exception:  # noqa: BLE001 - reporting only
        params = -1
    try:
        flops = count_flops(cfg.model.arch, num_classes, size=512, output_stride=cfg.model.output_stride)
    except Exception:  # noqa: BLE001
        flops = math.nan
    best = state.get("best_miou", last_result.get("best_miou", math.nan))
    iterations_done = int(state.get("iteration", last_result.get("iteration", 0)) or 0)
    status = own_status(status, iterations_done, cfg.optim.iterations)
    result = FitResult(
        config=cfg,
        iterations_done=iterations_done,
        best_miou=float(best) if best is not None else math.nan,
        final_miou=float(last.get("val/miou", last_result.get("val_miou", math.nan))),
        pixel_acc=float(last.get("val/pixel_acc", last_result.get("val_pixel_acc", math.nan))),
        per_class=list(last.get("per_class", [])),
        curves=list(state.get("curves", [])),
        params=params,
        flops=flops,
        wall_time_s=float(state.get("wall_time", math.nan)),
        images_per_s=float(state.get("images_seen", 0)) / max(float(state.get("train_time", 0.0)), 1e-9) if state else math.nan,
        device="unknown",
        checkpoint_dir=str(Path(cfg.run.out_dir) / CHECKPOINT_DIR) if state else None,
        model_path=None,
        stopped_early=status == "early_stopped",
        evals=list(state.get("evals", [])),
        final_miou_all_classes=float(last.get("val/miou_all_classes", math.nan)),
        effective_alpha=cfg.distill.effective_alpha,
    )
    if "node_id" in last_result:
        tags["node_id"] = last_result["node_id"]
    tags["restarts"] = max(0, count_attempts(cfg.run.out_dir) - 1)
    tags.update(extra_tags or {})
    if error:
        tags["error"] = error[-2000:]
        reason, failed_at = failure_summary(error)
        tags["error_reason"] = reason
        tags["failed_at_iteration"] = failed_at if failed_at is not None else -1
    write_trial(ctx.results_root, record_from_fit(result, study=ctx.study, trial_id=record_id, status=status, tags=tags))


_NONFINITE = re.compile(r"NonFiniteLossError: (non-finite loss at iteration (\d+)[^\n]*)")
_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)):\s*(.+)$", re.MULTILINE)


def failure_summary(error: str) -> tuple[str, int | None]:
    """(one-line reason, iteration it failed at or None) from a trial's error text (a traceback).

    A diverged trial names the iteration itself (``NonFiniteLossError: non-finite loss at iteration
    N: {...}``); otherwise the reason is the innermost ``SomeError: message`` line of the traceback.
    """
    m = _NONFINITE.search(error)
    if m:
        return f"NonFiniteLossError: {m.group(1).strip()}"[:500], int(m.group(2))
    lines = _EXC_LINE.findall(error)
    if not lines:
        tail = error.strip().splitlines()
        return (tail[-1].strip() if tail else "unknown error")[:500], None
    name, msg = lines[-1]
    it = re.search(r"at iteration (\d+)", msg)
    return f"{name.rsplit('.', 1)[-1]}: {msg.strip()}"[:500], int(it.group(1)) if it else None


def _error_text(trial: Any) -> str:
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


INTERRUPTED = "interrupted"  # stopped by SIGINT/SIGTERM of the driver; --resume continues it


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


def own_status(status: str, iterations_done: int, total: int) -> str:
    """A trial never counts as completed short of its schedule: ``completed`` with fewer than
    ``total`` iterations done becomes ``interrupted``."""
    if status == "completed" and iterations_done < total:
        return INTERRUPTED
    return status


def recorded(ctx: TrialContext, record_id: str) -> bool:
    """True if the trial has a Parquet record other than an ``interrupted`` one (which a resumed run
    replaces)."""
    path = part_path(ctx.results_root, ctx.study, "trials", record_id)
    if not path.is_file():
        return False
    try:
        import pandas as pd

        return str(pd.read_parquet(path, columns=["status"]).iloc[0]["status"]) != INTERRUPTED
    except Exception:  # noqa: BLE001 - unreadable: record it again
        return False


class StudyCallback(Callback):
    """Tune callback on the driver: records stopped/failed trials, releases their placement groups."""

    def __init__(self, ctx: TrialContext, release_pgs: bool) -> None:
        self.ctx = ctx
        self.release_pgs = release_pgs
        self.released: list[str] = []

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        started_trials(self.ctx)[trial.trial_id] = trial

    def _finish(self, trial: Any, errored: bool) -> None:
        last = dict(trial.last_result or {})
        if self.release_pgs and last.get("pg_id"):
            if release_placement_group(str(last["pg_id"])):
                self.released.append(str(last["pg_id"]))
        ckpt = getattr(trial, "checkpoint", None)
        err = _error_text(trial) if errored else None
        try:
            record_from_state(self.ctx, trial.config, trial.trial_id, status=terminal_status(last, errored),
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
    from types import SimpleNamespace

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
            if MEMBERS_KEY in cfg_dict:
                record_ids = [trial_config(ctx, m, member_id(trial_id, j))[2] for j, m in enumerate(member_configs(cfg_dict))]
            else:
                record_ids = [trial_config(ctx, cfg_dict, trial_id)[2]]
        except Exception:  # noqa: BLE001
            continue
        if all(recorded(ctx, r) for r in record_ids):
            continue
        errored = res.error is not None
        record_from_state(ctx, cfg_dict, trial_id, status=terminal_status(metrics, errored),
                          checkpoint_path=getattr(res.checkpoint, "path", None), last_result=metrics,
                          error=str(res.error) if errored else None)
        n += 1
    return n
