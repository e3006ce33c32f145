"""A trial's Parquet record: written by the trial when ``fit`` returns, or rebuilt from its checkpoint.

A trial that finishes writes its own record (:func:`write_result`), in the trial process, so it
survives the death of the Tune driver. A configuration that never returned from ``fit`` (ASHA
stopped it, it failed, the driver was interrupted; a cohort's diverged member) is recorded by
:func:`record_from_state` from the last checkpoint it wrote (``state.pt`` holds curves, evaluations
and the last per-class table), with its status and the iterations it actually reached: by the
driver (:mod:`segdistill.study.callbacks`) or, for a cohort's failed member, by the cohort trial.
Both sides read here whether a configuration is recorded already and how often it was restarted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..layout import CHECKPOINT_DIR, STATE_FILE
from ..models import build_model, count_flops, count_params
from ..results import part_path, record_from_fit, write_trial
from ..train import FitResult
from .plan import TrialContext, TrialMember, member_config

log = logging.getLogger(__name__)

ATTEMPTS_FILE = "attempts.jsonl"  # one line per start of a trial (restarts = lines - 1)
INTERRUPTED = "interrupted"  # stopped by SIGINT/SIGTERM of the driver; --resume continues it


def note_attempt(out_dir: str, **info: Any) -> int:
    """Append this start of the trial to ``out_dir/attempts.jsonl`` (fsynced); returns how many starts
    came before it, i.e. how often the trial has been restarted (worker or driver failure, resume)."""
    prior = count_attempts(out_dir)
    path = Path(out_dir) / ATTEMPTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"time": time.time(), **info}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return prior


def count_attempts(out_dir: str) -> int:
    """Complete lines of ``out_dir/attempts.jsonl`` (a line torn by a kill does not count)."""
    path = Path(out_dir) / ATTEMPTS_FILE
    if not path.is_file():
        return 0
    n = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            json.loads(line)
            n += 1
        except ValueError:
            pass
    return n


def finished_record(ctx: TrialContext, record_id: str) -> dict[str, Any] | None:
    """The trials row of a configuration that already finished (its record exists), else None."""
    path = part_path(ctx.results_root, ctx.study, "trials", record_id)
    if not path.is_file():
        return None
    try:
        row = pd.read_parquet(path).iloc[0].to_dict()
    except Exception:  # noqa: BLE001 - unreadable means "not finished"
        return None
    return row if row.get("status") == "completed" else None


def recorded(ctx: TrialContext, record_id: str) -> bool:
    """True if the configuration has a Parquet record other than an ``interrupted`` one (which a
    resumed run replaces)."""
    path = part_path(ctx.results_root, ctx.study, "trials", record_id)
    if not path.is_file():
        return False
    try:
        return str(pd.read_parquet(path, columns=["status"]).iloc[0]["status"]) != INTERRUPTED
    except Exception:  # noqa: BLE001 - unreadable: record it again
        return False


def write_result(ctx: TrialContext, result: FitResult, record_id: str, tags: Mapping[str, Any]) -> None:
    """Write the record of a configuration ``fit`` returned for."""
    write_trial(ctx.results_root, record_from_fit(result, study=ctx.study, trial_id=record_id, tags=dict(tags)))


def own_status(status: str, iterations_done: int, total: int) -> str:
    """A trial never counts as completed short of its schedule: ``completed`` with fewer than
    ``total`` iterations done becomes ``interrupted``."""
    if status == "completed" and iterations_done < total:
        return INTERRUPTED
    return status


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


def _state_candidates(out_dir: str, checkpoint_path: str | None, last_result: Mapping[str, Any]) -> list[Path]:
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


def record_from_state(ctx: TrialContext, member: TrialMember, trial_id: str, *, status: str,
                      checkpoint_path: str | None = None, last_result: Mapping[str, Any] | None = None,
                      error: str | None = None, extra_tags: Mapping[str, Any] | None = None) -> None:
    """Write the Parquet record of ``member`` of Tune trial ``trial_id``, which did not return from
    ``fit``, from its last checkpoint; ``extra_tags`` are added to its tags. A member recorded
    already (by itself) is left as it is."""
    if recorded(ctx, member.record_id):
        return
    last_result = dict(last_result or {})
    cfg = member_config(ctx, member)
    tags = member.tags(trial_id)
    state: dict[str, Any] = {}
    for path in _state_candidates(cfg.run.out_dir, checkpoint_path, last_result):
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
    write_trial(ctx.results_root, record_from_fit(result, study=ctx.study, trial_id=member.record_id, status=status,
                                                  tags=tags))
