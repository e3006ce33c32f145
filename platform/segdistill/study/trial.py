"""The two trial shapes and everything a trial does around ``segdistill.train.fit``.

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

Both shapes write the trial's Parquet record from the trial itself when ``fit`` returns (this
survives the death of the Tune driver); trials Tune stops or that fail are recorded by the driver
(:mod:`segdistill.study.callbacks`) from their last checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import TrainConfig
from ..layout import CHECKPOINT_DIR, STATE_FILE
from ..results import part_path, record_from_fit, write_trial
from .interrupt import quiet_stop_in_worker
from .names import LEGACY_SEED_KEY, LEGACY_VARIANT_KEY, SEED_KEY, SETTING_KEY, setting_names
from .spec import TAG_PREFIX, Resources

ATTEMPTS_FILE = "attempts.jsonl"  # one line per start of a trial (restarts = lines - 1)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study needs besides its Tune config (passed with tune.with_parameters)."""

    study: str
    results_root: str
    runs_root: str
    storage_path: str
    base_flat: Mapping[str, Any]
    variants: tuple[Mapping[str, Any], ...]
    tags: Mapping[str, Any] = field(default_factory=dict)
    shape: str = "inline"
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 0
    setting_names: tuple[str, ...] = ()  # one per variant (segdistill.study.names); () = derived
    verbose: int = 0  # > 0: Ray's INFO logs in the trial processes stay on


def variant_of(ctx: TrialContext, config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The variant a Tune config names: by its ``setting`` name (or, in configs written before setting
    names, by its ``variant`` index)."""
    if SETTING_KEY in config:
        names = ctx.setting_names or tuple(setting_names(ctx.variants, ctx.base_flat))
        name = str(config[SETTING_KEY])
        if name not in names:
            raise KeyError(f"the trial's config names setting {name!r}, which study {ctx.study!r} does not have "
                           f"(its settings: {', '.join(map(repr, names))})")
        return ctx.variants[names.index(name)]
    return ctx.variants[int(config.get(LEGACY_VARIANT_KEY, 0))]


def trial_config(ctx: TrialContext, config: Mapping[str, Any], trial_id: str) -> tuple[TrainConfig, dict[str, Any], str]:
    """(TrainConfig, result tags, record id) of one trial from its Tune config.

    Tune's config holds ``setting`` (the variant's name, :mod:`segdistill.study.names`), ``run.seed``,
    the swept flat keys resolved from the setting and, with Optuna, the searched flat keys such as
    ``distill.mu``; flat keys in the config override the variant's.
    """
    variant = dict(variant_of(ctx, config))
    tags = dict(ctx.tags)
    tags.update({k[len(TAG_PREFIX):]: v for k, v in variant.items() if k.startswith(TAG_PREFIX)})
    flat = {k: v for k, v in variant.items() if not k.startswith(TAG_PREFIX)}
    flat.update({k: v for k, v in config.items() if "." in k and not k.startswith(TAG_PREFIX)})
    flat["run.seed"] = int(config.get(SEED_KEY, config.get(LEGACY_SEED_KEY, flat.get("run.seed", 0))))
    flat.setdefault("run.out_dir", str(Path(ctx.runs_root) / trial_id))
    flat["run.progress"] = False
    cfg = TrainConfig.from_flat(dict(ctx.base_flat)).replace(**flat)
    record_id = str(tags.pop("record_id", trial_id))
    tags.setdefault("trial_shape", ctx.shape)
    tags.setdefault("tune_trial_id", trial_id)
    return cfg, tags, record_id


def trial_threads(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``run.threads`` set to the CPUs Ray gave this trial when it is 0 (torch's default)
    and the trial trains on the CPU: Ray sets ``OMP_NUM_THREADS`` to a task's CPUs, and the default
    then is one thread, so a lone teacher trial holding every core would use one of them. GPU runs,
    and runs that name their threads, are left as they are."""
    if cfg.run.threads or cfg.run.device.startswith("cuda") or (cfg.run.device == "auto" and _cuda_available()):
        return cfg
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0) if ray.is_initialized() else 0.0
    return cfg.replace(**{"run.threads": max(1, int(cpus))}) if cpus >= 1 else cfg


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
        self.eval_every = cfg.run.eval_every or self.total
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


def finished_record(ctx: TrialContext, record_id: str) -> dict[str, Any] | None:
    """The trials row of a trial that already finished (its record exists), else None."""
    path = part_path(ctx.results_root, ctx.study, "trials", record_id)
    if not path.is_file():
        return None
    import pandas as pd

    try:
        row = pd.read_parquet(path).iloc[0].to_dict()
    except Exception:  # noqa: BLE001 - unreadable means "not finished"
        return None
    return row if row.get("status") == "completed" else None


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
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("iteration", 0))
    except Exception:  # noqa: BLE001 - a torn file: fit will report it
        return 0


def note_attempt(out_dir: str, **info: Any) -> int:
    """Append this start of the trial to ``out_dir/attempts.jsonl`` (fsynced); returns how many starts
    came before it, i.e. how often the trial has been restarted (worker or driver failure, resume)."""
    import json
    import time

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
    import json

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


def report_recorded(row: Mapping[str, Any], total: int) -> None:
    """``tune.report`` a recorded trial's final metrics (its Parquet row), so the scheduler and the
    searcher (Optuna) see the true final value even when the live report of it was lost."""
    from ray import tune

    tune.report({REPORT_KEY: EVAL, "iteration": int(row.get("iterations_done", 0)), "total_iterations": int(total),
                 "val_miou": float(row.get("final_miou", math.nan)),
                 "val_pixel_acc": float(row.get("pixel_acc", math.nan)),
                 "best_miou": float(row.get("best_miou", math.nan))})


def quiet_ray_logs(ctx: TrialContext) -> None:
    """Ray Train/Tune INFO messages in this trial process ("Checkpoint successfully created at ...")
    off unless the study runs verbose; warnings stay. A stop signal inside a finaliser prints nothing
    (:func:`~segdistill.study.interrupt.quiet_stop_in_worker`)."""
    import logging

    quiet_stop_in_worker()
    if not ctx.verbose:
        for name in ("ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)


def write_result(ctx: TrialContext, result: Any, record_id: str, tags: Mapping[str, Any]) -> None:
    write_trial(ctx.results_root, record_from_fit(result, study=ctx.study, trial_id=record_id, tags=dict(tags)))


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
        from ray import tune

        metrics = self.progress.from_log(record)
        if metrics is not None:
            tune.report({**metrics, **self.extra})

    def on_eval(self, event: Any) -> None:
        from ray import tune

        metrics = {**self.progress.from_eval(report_metrics(event.iteration, event.metrics, self.total)), **self.extra}
        ckpt = tune.Checkpoint.from_directory(event.checkpoint_dir) if event.checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)
        self.last_reported = int(event.iteration)

    def report_final(self, result: Any) -> None:
        """Report ``result``'s final evaluation if this process has not: a trial resumed from a
        checkpoint written at its last evaluation (the process died between writing it and
        reporting it) evaluates nothing more, and Tune would otherwise complete it with the
        previous evaluation's value (the Optuna "penultimate value" gap)."""
        from ray import tune

        if not result.evals or self.last_reported == int(result.iterations_done):
            return
        tune.report({**report_metrics(result.iterations_done, result.evals[-1], self.total), **self.extra})
        self.last_reported = int(result.iterations_done)


def inline_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: ``fit`` in this process (a cohort of configurations when the config
    holds ``members``, see :mod:`segdistill.study.cohort_trial`)."""
    import ray
    from ray import tune

    from ..train import fit
    from .cohort_trial import MEMBERS_KEY, cohort_trainable

    if MEMBERS_KEY in config:
        return cohort_trainable(config, ctx)

    trial_id = tune.get_context().get_trial_id()
    cfg, tags, record_id = trial_config(ctx, config, trial_id)
    cfg = trial_threads(cfg)
    node = ray.get_runtime_context().get_node_id()
    tags["node_id"] = node
    done = finished_record(ctx, record_id)
    if done is not None:
        # Finished (and recorded) after the driver's last experiment snapshot: do not train again,
        # but report the recorded final value (Tune's restored last result may be an earlier one).
        report_recorded(done, cfg.optim.iterations)
        return
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restore_checkpoint(d, cfg.run.out_dir)
    tags["resumed_from_iteration"] = checkpoint_iteration(cfg.run.out_dir)
    tags["restarts"] = note_attempt(cfg.run.out_dir, pid=os.getpid(), node_id=node, rank=0,
                                    start_iteration=tags["resumed_from_iteration"])
    quiet_ray_logs(ctx)
    reporter = _TuneReporter(cfg, {"node_id": node})
    result = fit(cfg, [reporter], resume=True)
    write_result(ctx, result, record_id, tags)
    reporter.report_final(result)


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
        import ray.train

        metrics = self.progress.from_log(record)
        if metrics is not None:
            ray.train.report({**metrics, **self.extra})

    def on_eval(self, event: Any) -> None:
        import ray.train

        metrics = {**self.progress.from_eval(report_metrics(event.iteration, event.metrics, self.total)), **self.extra}
        ckpt = ray.train.Checkpoint.from_directory(event.checkpoint_dir) if event.checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker (torch.distributed already initialised by TorchTrainer)."""
    import ray
    import ray.train
    import torch.distributed as dist

    from ..train import fit
    from .runtime import current_placement_group_hex

    ctx: TrialContext = loop_config["ctx"]
    trial_id: str = loop_config["trial_id"]
    cfg, tags, record_id = trial_config(ctx, loop_config["config"], trial_id)
    tctx = ray.train.get_context()
    rank, local_rank = tctx.get_world_rank(), tctx.get_local_rank()
    if ctx.resources.gpus > 0:
        import ray.train.torch

        cfg = cfg.replace(**{"run.device": str(ray.train.torch.get_device())})
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None and local_rank == 0:
        with ckpt.as_directory() as d:
            restore_checkpoint(d, cfg.run.out_dir)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    tags["resumed_from_iteration"] = checkpoint_iteration(cfg.run.out_dir)
    node = ray.get_runtime_context().get_node_id()
    if rank == 0:
        tags["restarts"] = note_attempt(cfg.run.out_dir, pid=os.getpid(), node_id=node, rank=rank,
                                        start_iteration=tags["resumed_from_iteration"])
    extra = {"pg_id": current_placement_group_hex(), "node_id": node, "world_size": tctx.get_world_size()}
    quiet_ray_logs(ctx)
    result = fit(cfg, [_TrainReporter(cfg, extra)], resume=True)
    if rank == 0:
        tags.update({"node_id": node, "world_size": tctx.get_world_size()})
        write_result(ctx, result, record_id, tags)


def train_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable that launches a Ray Train run for this trial and waits for it."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg, _, record_id = trial_config(ctx, config, trial_id)
    done = finished_record(ctx, record_id)
    if done is not None:  # see inline_trainable
        report_recorded(done, cfg.optim.iterations)
        return
    r = ctx.resources
    per_worker = {"CPU": r.cpus, **({"GPU": r.gpus} if r.gpus else {})}
    trainer = TorchTrainer(
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
    done = finished_record(ctx, record_id)
    if done is not None:
        report_recorded(done, cfg.optim.iterations)
