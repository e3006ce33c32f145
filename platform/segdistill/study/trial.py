"""The trial shapes (inline, cohort, train) and everything a trial does around ``fit``.

``inline``: the Tune trial process runs ``fit`` itself and reports with ``ray.tune.report``
(checkpoint = the trainer's ``out_dir/checkpoint``; restored with ``ray.tune.get_checkpoint``).
Fractional GPUs (``tune.with_resources``) work in this shape; it is also the shape PBT would need
(not offered: ``fit`` refuses checkpoints written with other hyperparameters, which PBT's exploit
step hands over).

``train``: the Tune trial is a light driver that launches a ``ray.train.torch.TorchTrainer``
(Train V2: ``Tuner(TorchTrainer)`` is not supported, ``ray/train/v2/api/data_parallel_trainer.py``)
with ``num_workers`` DDP workers; the workers call ``ray.train.report(metrics, checkpoint=...)`` and
``ray.tune.integration.ray_train.TuneReportCallback`` forwards rank 0's metrics to Tune, adding the
persisted checkpoint's path as ``checkpoint_path``. The Train run is named ``train_<trial id>``
under the study's storage path, so a restarted trial re-opens the same run and Train V2 restores
its checkpoint-manager snapshot (``ray.train.get_checkpoint()`` returns the latest checkpoint).

``cohort`` (an inline trial whose config holds ``members``): several grid configurations trained
together by :func:`segdistill.cohort.fit_cohort` (one data stream, one teacher forward per step),
each keeping its own run directory, checkpoints, record and restart count
(:mod:`segdistill.study.plan`). Each member reports with ``member`` = its index; a member that
fails is recorded here, while the others go on.

Every shape starts each configuration with :func:`begin` (its TrainConfig from its plan, built
once; its tags; its checkpoint restored; this start noted) and writes its Parquet record from the
trial itself when ``fit`` returns (:mod:`segdistill.study.records`; this survives the death of the
Tune driver); trials Tune stops or that fail are recorded by the driver
(:mod:`segdistill.study.callbacks`) from their last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import traceback
from pathlib import Path
from typing import Any, Mapping

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from ..cohort import fit_cohort
from ..config import TrainConfig
from ..layout import CHECKPOINT_DIR, STATE_FILE
from ..train import fit
from .interrupt import quiet_stop_in_worker
from .names import MEMBERS_KEY
from .plan import TrialContext, TrialMember, member_config, trial_members
from .records import failure_summary, finished_record, note_attempt, record_from_state, write_result
from .runtime import current_placement_group_hex

COHORT_END = "cohort_end"  # the REPORT_KEY of a cohort trial's closing result
MEMBER_FAILED = "member_failed"  # the REPORT_KEY of a result saying one member failed (the others go on)


def trial_threads(device: str, threads: int) -> int:
    """The ``run.threads`` a trial on ``device`` asking for ``threads`` uses: the CPUs Ray gave this
    trial when it is 0 (torch's default) and the trial trains on the CPU: Ray sets
    ``OMP_NUM_THREADS`` to a task's CPUs, and the default then is one thread, so a lone teacher trial
    holding every core would use one of them. GPU runs, and runs that name their threads, keep theirs."""
    if threads or device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return threads
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0) if ray.is_initialized() else 0.0
    return max(1, int(cpus)) if cpus >= 1 else threads


def _threads(member: TrialMember) -> dict[str, Any]:
    """``{"run.threads": n}`` for :func:`member_config`: :func:`trial_threads` of the member's run."""
    run = member.plan.config.run
    extra = member.extra
    return {"run.threads": trial_threads(str(extra.get("run.device", run.device)),
                                         int(extra.get("run.threads", run.threads)))}


REPORT_KEY = "report"  # what a Tune result is: an evaluation ("eval") or a progress update ("progress")
EVAL, PROGRESS = "eval", "progress"
PROGRESS_REPORTS_PER_RUN = 50  # at most this many progress updates per run, besides its evaluations


def report_metrics(iteration: int, metrics: Mapping[str, float], total: int) -> dict[str, Any]:
    """The flat, Tune-friendly metrics every evaluation report carries (no '/' in names)."""
    out: dict[str, Any] = {REPORT_KEY: EVAL, "iteration": int(iteration), "total_iterations": int(total)}
    for key, value in metrics.items():
        if key == "iteration":
            continue
        out[key.replace("/", "_")] = float(value)
    out["best_miou"] = float(metrics.get("val/best_miou", math.nan))
    return out


def progress_stride(cfg: TrainConfig) -> int:
    """Iterations between two progress reports: a multiple of ``run.log_every`` giving at most
    :data:`PROGRESS_REPORTS_PER_RUN` per run. Decided by the iteration alone, so every Ray Train
    worker reports at the same iterations (Train's report is collective)."""
    log_every = max(1, cfg.run.log_every)
    want = max(1, math.ceil(cfg.optim.iterations / PROGRESS_REPORTS_PER_RUN))
    return log_every * math.ceil(want / log_every)


class ProgressReports:
    """Builds a run's progress results from ``on_log`` records: ``report="progress"``, the iteration,
    the loss terms, lr and throughput, and the last evaluation's values (NaN before the first, so
    every result carries the metric Tune expects). The scheduler and searcher ignore these
    (:class:`segdistill.study.runner.EvalOnlyASHA`, ``ResumableOptunaSearch``); the driver's live
    view and Tune's result files show them. None at evaluation iterations: their report follows."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.total = cfg.optim.iterations
        self.stride = progress_stride(cfg)
        self.eval_every = cfg.eval_period
        self.last_log: dict[str, float] = {}
        self.last_eval: dict[str, float] = {"val_miou": math.nan, "best_miou": math.nan}

    def from_log(self, record: Mapping[str, float]) -> dict[str, Any] | None:
        it = int(record["iteration"])
        self.last_log = {k.replace("/", "_"): float(v) for k, v in record.items()
                         if k != "iteration" and isinstance(v, (int, float))}
        if it % self.stride or it % self.eval_every == 0 or it >= self.total:
            return None
        return {REPORT_KEY: PROGRESS, "iteration": it, "total_iterations": self.total, **self.last_log,
                **self.last_eval}

    def from_eval(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """An evaluation report with the latest loss terms added."""
        self.last_eval = {"val_miou": metrics.get("val_miou", math.nan),
                          "best_miou": metrics.get("best_miou", math.nan)}
        return {**self.last_log, **metrics}


def restore_checkpoint(src_dir: str | None, out_dir: str) -> bool:
    """Copy a Ray checkpoint's ``state.pt`` into ``out_dir/checkpoint/`` unless one is there.

    A local state file is never older than the last reported checkpoint (Ray copies it at report
    time), so it wins; the copy matters when the trial resumes on another node.
    """
    if not src_dir:
        return False
    src = Path(src_dir) / STATE_FILE
    dst = Path(out_dir) / CHECKPOINT_DIR / STATE_FILE
    if dst.is_file() or not src.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".restore.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def checkpoint_iteration(out_dir: str) -> int:
    """The iteration of ``out_dir``'s resumable checkpoint (0 if none): where a restarted trial resumes."""
    path = Path(out_dir) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("iteration", 0))
    except Exception:  # noqa: BLE001 - a torn file: fit will report it
        return 0


def report_recorded(row: Mapping[str, Any], total: int) -> None:
    """``tune.report`` a recorded trial's final metrics (its Parquet row), so the scheduler and the
    searcher (Optuna) see the true final value even when the live report of it was lost."""
    tune.report({REPORT_KEY: EVAL, "iteration": int(row.get("iterations_done", 0)), "total_iterations": int(total),
                 "val_miou": float(row.get("final_miou", math.nan)),
                 "val_pixel_acc": float(row.get("pixel_acc", math.nan)),
                 "best_miou": float(row.get("best_miou", math.nan))})


def quiet_ray_logs(ctx: TrialContext) -> None:
    """Ray Train/Tune INFO messages in this trial process ("Checkpoint successfully created at ...")
    off unless the study runs verbose; warnings stay. A stop signal inside a finaliser prints nothing
    (:func:`~segdistill.study.interrupt.quiet_stop_in_worker`)."""
    quiet_stop_in_worker()
    if not ctx.verbose:
        for name in ("ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)


def begin(ctx: TrialContext, member: TrialMember, trial_id: str, *, node: str, tags: Mapping[str, Any] | None = None,
          checkpoint: Any = None, rank: int = 0, restores: bool = True, after_restore: Any = None,
          **flat: Any) -> tuple[TrainConfig, dict[str, Any], dict[str, Any] | None]:
    """The prologue every trial shape runs for each configuration it trains.

    Returns (its TrainConfig, built once from its plan with ``flat`` set; its result tags: the plan's,
    Tune's trial id, ``node``, ``tags``, where it resumes and how often it was restarted; its recorded
    row if it finished already, else None). Unless finished: Ray's ``checkpoint`` is copied into its
    run directory (by the process with ``restores``), ``after_restore`` is called (the Train workers'
    barrier), and rank 0 notes this start in ``attempts.jsonl``.
    """
    quiet_ray_logs(ctx)
    cfg = member_config(ctx, member, **flat)
    out_tags = {**member.tags(trial_id), "node_id": node, **dict(tags or {})}
    done = finished_record(ctx, member.record_id)
    if done is not None:
        return cfg, out_tags, done
    if checkpoint is not None and restores:
        with checkpoint.as_directory() as d:
            restore_checkpoint(d, cfg.run.out_dir)
    if after_restore is not None:
        after_restore()
    out_tags["resumed_from_iteration"] = checkpoint_iteration(cfg.run.out_dir)
    if rank == 0:
        out_tags["restarts"] = note_attempt(cfg.run.out_dir, pid=os.getpid(), node_id=node, rank=rank,
                                            start_iteration=out_tags["resumed_from_iteration"])
    return cfg, out_tags, None


# -- inline shape --------------------------------------------------------------------------
class _TuneReporter:
    """fit callback: ``ray.tune.report`` at each evaluation, with the checkpoint when one was written,
    and progress reports in between (:class:`ProgressReports`)."""

    def __init__(self, cfg: TrainConfig, extra: Mapping[str, Any]) -> None:
        self.total = cfg.optim.iterations
        self.extra = dict(extra)
        self.last_reported = -1
        self.progress = ProgressReports(cfg)

    def on_log(self, record: dict[str, float]) -> None:
        metrics = self.progress.from_log(record)
        if metrics is not None:
            tune.report({**metrics, **self.extra})

    def on_eval(self, event: Any) -> None:
        metrics = {**self.progress.from_eval(report_metrics(event.iteration, event.metrics, self.total)), **self.extra}
        ckpt = tune.Checkpoint.from_directory(event.checkpoint_dir) if event.checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)
        self.last_reported = int(event.iteration)

    def report_final(self, result: Any) -> None:
        """Report ``result``'s final evaluation if this process has not: a trial resumed from a
        checkpoint written at its last evaluation (the process died between writing it and
        reporting it) evaluates nothing more, and Tune would otherwise complete it with the
        previous evaluation's value (the Optuna "penultimate value" gap)."""
        if not result.evals or self.last_reported == int(result.iterations_done):
            return
        tune.report({**report_metrics(result.iterations_done, result.evals[-1], self.total), **self.extra})
        self.last_reported = int(result.iterations_done)


def inline_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: ``fit`` in this process (a cohort of configurations when the config
    holds ``members``: :func:`cohort_trainable`)."""
    if MEMBERS_KEY in config:
        return cohort_trainable(config, ctx)
    trial_id = tune.get_context().get_trial_id()
    node = ray.get_runtime_context().get_node_id()
    (member,) = trial_members(ctx, trial_id, config)
    cfg, tags, done = begin(ctx, member, trial_id, node=node, checkpoint=tune.get_checkpoint(), **_threads(member))
    if done is not None:
        # Finished (and recorded) after the driver's last experiment snapshot: do not train again,
        # but report the recorded final value (Tune's restored last result may be an earlier one).
        report_recorded(done, cfg.optim.iterations)
        return
    reporter = _TuneReporter(cfg, {"node_id": node})
    result = fit(cfg, [reporter], resume=True)
    write_result(ctx, result, member.record_id, tags)
    reporter.report_final(result)


# -- cohort shape ----------------------------------------------------------------------------
class _MemberReporter:
    """fit callback of one cohort member: reports its evaluations, progress and failure to Tune
    (``member`` = its index in the cohort), so the driver follows every member of the cohort."""

    def __init__(self, cfg: TrainConfig, j: int, total: int, node: str) -> None:
        self.j = j
        self.total = total
        self.node = node
        self.progress = ProgressReports(cfg)
        self.iteration = 0

    def on_log(self, record: dict[str, float]) -> None:
        self.iteration = int(record["iteration"])
        metrics = self.progress.from_log(record)
        if metrics is not None:
            tune.report({**metrics, "member": self.j, "node_id": self.node})

    def on_eval(self, event: Any) -> None:
        self.iteration = int(event.iteration)
        metrics = self.progress.from_eval(report_metrics(event.iteration, event.metrics, self.total))
        tune.report({**metrics, "member": self.j, "node_id": self.node})

    def on_error(self, exc: BaseException) -> None:
        reason, at = failure_summary(_traceback(exc))
        tune.report({REPORT_KEY: MEMBER_FAILED, "member": self.j,
                     "iteration": at if at is not None else self.iteration, "total_iterations": self.total,
                     "error_reason": reason, "val_miou": math.nan, "best_miou": math.nan, "node_id": self.node})


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def cohort_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable for a cohort trial (inline shape): its unrecorded members trained
    together; each member's record written (failed members' from their checkpoints), then one closing
    result: the cohort's best final mIoU."""
    trial_id = tune.get_context().get_trial_id()
    node = ray.get_runtime_context().get_node_id()
    members = trial_members(ctx, trial_id, config)
    cohort = {"cohort_id": trial_id, "cohort_size": len(members)}
    pending: list[tuple[TrialMember, TrainConfig, dict[str, Any]]] = []
    for member in members:
        cfg, tags, done = begin(ctx, member, trial_id, node=node, tags=cohort, **_threads(member))
        if done is None:  # else finished and recorded before a restart
            pending.append((member, cfg, tags))
    total = max((cfg.optim.iterations for _, cfg, _ in pending), default=0)
    final = []
    if pending:
        results = fit_cohort([cfg for _, cfg, _ in pending],
                             [[_MemberReporter(cfg, member.index, total, node)] for member, cfg, _ in pending],
                             resume=True, isolate_failures=True)
        for (member, _, tags), result in zip(pending, results):
            if isinstance(result, BaseException):
                record_from_state(ctx, member, trial_id, status="failed", error=_traceback(result),
                                  last_result={"node_id": node}, extra_tags=cohort)
            else:
                write_result(ctx, result, member.record_id, tags)
                final.append(result.final_miou)
    tune.report({REPORT_KEY: COHORT_END, "iteration": total, "total_iterations": total, "members_trained": len(pending),
                 "val_miou": max(final) if final else math.nan, "best_miou": max(final) if final else math.nan})


# -- train shape -----------------------------------------------------------------------------
class _TrainReporter:
    """fit callback on every Ray Train worker: ``ray.train.report`` at each evaluation and progress
    reports in between (all ranks report, at the same iterations, as Train V2 requires; only rank 0
    attaches the checkpoint)."""

    def __init__(self, cfg: TrainConfig, extra: Mapping[str, Any]) -> None:
        self.total = cfg.optim.iterations
        self.extra = dict(extra)
        self.progress = ProgressReports(cfg)

    def on_log(self, record: dict[str, float]) -> None:
        metrics = self.progress.from_log(record)
        if metrics is not None:
            ray.train.report({**metrics, **self.extra})

    def on_eval(self, event: Any) -> None:
        metrics = {**self.progress.from_eval(report_metrics(event.iteration, event.metrics, self.total)), **self.extra}
        ckpt = ray.train.Checkpoint.from_directory(event.checkpoint_dir) if event.checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker (torch.distributed already initialised by TorchTrainer)."""
    ctx: TrialContext = loop_config["ctx"]
    trial_id: str = loop_config["trial_id"]
    (member,) = trial_members(ctx, trial_id, loop_config["config"])
    tctx = ray.train.get_context()
    rank, local_rank, world_size = tctx.get_world_rank(), tctx.get_local_rank(), tctx.get_world_size()
    device = {"run.device": str(ray.train.torch.get_device())} if ctx.resources.gpus > 0 else {}
    barrier = dist.barrier if dist.is_available() and dist.is_initialized() else None
    node = ray.get_runtime_context().get_node_id()
    cfg, tags, done = begin(ctx, member, trial_id, node=node, tags={"world_size": world_size},
                            checkpoint=ray.train.get_checkpoint(), rank=rank, restores=local_rank == 0,
                            after_restore=barrier, **device)
    if done is not None:  # recorded since the trial's driver looked (it reports the record)
        return
    extra = {"pg_id": current_placement_group_hex(), "node_id": node, "world_size": world_size}
    result = fit(cfg, [_TrainReporter(cfg, extra)], resume=True)
    if rank == 0:
        write_result(ctx, result, member.record_id, tags)


def train_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable that launches a Ray Train run for this trial and waits for it."""
    trial_id = tune.get_context().get_trial_id()
    (member,) = trial_members(ctx, trial_id, config)
    total = member.iterations
    done = finished_record(ctx, member.record_id)
    if done is not None:  # see inline_trainable
        report_recorded(done, total)
        return
    r = ctx.resources
    per_worker = {"CPU": r.cpus, **({"GPU": r.gpus} if r.gpus else {})}
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={"ctx": ctx, "trial_id": trial_id, "config": dict(config)},
        scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.gpus > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train_{trial_id}", storage_path=ctx.storage_path,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=ctx.max_failures)),
    )
    trainer.fit()
    # TuneReportCallback hands results over through a one-slot queue that Tune drains while the
    # trial runs; the last one can be lost when the Train run ends right after it (observed on
    # Ray 2.58: the final evaluation missing from Tune's results of finished trials). Report the
    # recorded final metrics once more so the scheduler and Optuna see the true final value.
    done = finished_record(ctx, member.record_id)
    if done is not None:
        report_recorded(done, total)
