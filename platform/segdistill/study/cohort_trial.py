"""Cohort trials: several grid configurations trained in one Tune trial (:mod:`segdistill.cohort`).

A grid ablation's configurations usually differ only in distillation hyperparameters; those with
the same :func:`~segdistill.cohort.cohort_signature` (data, student, schedule, seed, teacher) can
share one data stream and one teacher forward per step. :func:`plan_cohorts` groups a grid into
cohorts, sized so the cluster's trial slots stay busy; the runner then gives Tune one trial per cohort
with ``config = {"members": [[variant, seed], ...]}``. Each member keeps its own out_dir
(``runs/<trial>_<j>``), checkpoints, Parquet row (record id ``<trial>_<j>``) and restart count:
results stay one row per configuration, exactly as without cohorts.
"""

from __future__ import annotations

import math
import os
import traceback
from collections import defaultdict
from typing import Any, Mapping, Sequence

from ..cohort import cohort_signature
from ..config import TrainConfig
from .names import LEGACY_SEED_KEY, LEGACY_VARIANT_KEY, MEMBERS_KEY, SEED_KEY, SETTING_KEY
from .spec import StudySpec

COHORT_END = "cohort_end"  # the REPORT_KEY of a cohort trial's closing result
MEMBER_FAILED = "member_failed"  # the REPORT_KEY of a result saying one member failed (the others go on)


def member_id(trial_id: str, j: int) -> str:
    """Record id (and run directory name) of member ``j`` of cohort trial ``trial_id``."""
    return f"{trial_id}_{j}"


def member_configs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-member Tune configs (``{"setting": name, "run.seed": s}``) of a cohort trial's config
    (``{"variant": v, "seed": s}`` for configs written before setting names)."""
    return [{SETTING_KEY: v, SEED_KEY: int(s)} if isinstance(v, str)
            else {LEGACY_VARIANT_KEY: int(v), LEGACY_SEED_KEY: int(s)} for v, s in config[MEMBERS_KEY]]


def cohorts_apply(spec: StudySpec, shape: str) -> bool:
    """Cohorts are used for grid studies without early stopping, in inline trials, unless disabled."""
    return spec.cohort_size > 1 and spec.search == "grid" and spec.scheduler == "none" and shape == "inline" \
        and spec.num_samples == 1


def plan_cohorts(configs: Sequence[tuple[int, int, TrainConfig]], slots: int, max_size: int) -> list[list[list[int]]]:
    """Group ``(variant index, seed, config)`` triples into cohorts of compatible configurations.

    The size is ``min(max_size, ceil(len(configs) / slots))`` so that a study never has fewer trials
    than the cluster runs at once; each compatible group is split into near-equal parts of at most
    that size. Returns, per cohort, its members as ``[variant, seed]`` pairs (the Tune config value).
    """
    if not configs:
        return []
    size = max(1, min(max_size, math.ceil(len(configs) / max(1, slots))))
    groups: dict[Any, list[list[int]]] = defaultdict(list)
    for v, s, cfg in configs:
        groups[cohort_signature(cfg)].append([int(v), int(s)])
    out: list[list[list[int]]] = []
    for members in groups.values():
        parts = math.ceil(len(members) / size)
        for k in range(parts):
            out.append(members[k::parts])  # near-equal parts
    return out


def cohort_trainable(config: dict[str, Any], ctx: Any) -> None:
    """Tune function trainable for a cohort trial (inline shape)."""
    import ray
    from ray import tune

    from ..cohort import fit_cohort
    from .callbacks import failure_summary, record_from_state
    from .trial import (REPORT_KEY, ProgressReports, checkpoint_iteration, finished_record, note_attempt,
                        quiet_ray_logs, report_metrics, trial_config, trial_threads, write_result)

    quiet_ray_logs(ctx)
    trial_id = tune.get_context().get_trial_id()
    node = ray.get_runtime_context().get_node_id()
    pending: list[tuple[TrainConfig, dict[str, Any], str, dict[str, Any], str, int]] = []
    for j, member in enumerate(member_configs(config)):
        cfg, tags, record_id = trial_config(ctx, member, member_id(trial_id, j))
        cfg = trial_threads(cfg)
        if finished_record(ctx, record_id) is not None:
            continue  # finished and recorded before a restart
        tags.update({"node_id": node, "cohort_id": trial_id, "cohort_size": len(config[MEMBERS_KEY])})
        tags["resumed_from_iteration"] = checkpoint_iteration(cfg.run.out_dir)
        tags["restarts"] = note_attempt(cfg.run.out_dir, pid=os.getpid(), node_id=node, rank=0,
                                        start_iteration=tags["resumed_from_iteration"])
        pending.append((cfg, tags, record_id, member, member_id(trial_id, j), j))
    total = max((c.optim.iterations for c, *_ in pending), default=0)

    class Reporter:
        """Reports each member's evaluations, progress and failure to Tune (``member`` = its index in
        the cohort), so the driver follows every member of the cohort."""

        def __init__(self, cfg: TrainConfig, j: int) -> None:
            self.j = j
            self.progress = ProgressReports(cfg)
            self.iteration = 0

        def on_log(self, record: dict[str, float]) -> None:
            self.iteration = int(record["iteration"])
            metrics = self.progress.from_log(record)
            if metrics is not None:
                tune.report({**metrics, "member": self.j, "node_id": node})

        def on_eval(self, event: Any) -> None:
            self.iteration = int(event.iteration)
            metrics = self.progress.from_eval(report_metrics(event.iteration, event.metrics, total))
            tune.report({**metrics, "member": self.j, "node_id": node})

        def on_error(self, exc: BaseException) -> None:
            error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            reason, at = failure_summary(error)
            tune.report({REPORT_KEY: MEMBER_FAILED, "member": self.j,
                         "iteration": at if at is not None else self.iteration, "total_iterations": total,
                         "error_reason": reason, "val_miou": math.nan, "best_miou": math.nan, "node_id": node})

    final = []
    if pending:
        results = fit_cohort([p[0] for p in pending], [[Reporter(p[0], p[5])] for p in pending], resume=True,
                             isolate_failures=True)
        for (cfg, tags, record_id, member, mid, _), result in zip(pending, results):
            if isinstance(result, BaseException):
                error = "".join(traceback.format_exception(type(result), result, result.__traceback__))
                record_from_state(ctx, member, mid, status="failed", error=error, last_result={"node_id": node},
                                  extra_tags={k: tags[k] for k in ("cohort_id", "cohort_size")})
            else:
                write_result(ctx, result, record_id, tags)
                final.append(result.final_miou)
    # One closing result for Tune: the cohort's best final mIoU (the per-member rows are in Parquet).
    tune.report({REPORT_KEY: COHORT_END, "iteration": total, "total_iterations": total, "members_trained": len(pending),
                 "val_miou": max(final) if final else math.nan, "best_miou": max(final) if final else math.nan})
