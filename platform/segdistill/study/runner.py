"""``run_study``: a :class:`StudySpec` -> teachers from the zoo -> Ray Tune trials -> Parquet.

Where things go (all absolute paths; on a cluster ``results_root`` and the zoo must be on
storage every node sees, e.g. NFS, because trials write there directly)::

    <results>/<study>/{trials,per_class,curves,...}/<trial>.parquet   the records (segdistill.results)
    <results>/<study>/runs/<trial>/                                   each trial's fit out_dir
    <results>/<study>/ray/tune/                                       Tune experiment (resume state)
    <results>/<study>/ray/train_<trial>/                              Ray Train runs (train shape)
    <results>/<study>/optuna.journal                                  Optuna storage (search="optuna")
    <zoo>/...                                                         teachers (segdistill.study.zoo)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import optuna
import pandas as pd
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.trainable.function_trainable import wrap_function

from ..results import read_trials
from . import interrupt, mlflow_log
from .callbacks import StudyCallback, live_context, reconcile, started_results
from .dashboard import OPTUNA_FILE
from .guards import (DesignChange, ZooEntryError, check_design, check_results_root, design_of, flock_file, set_aside,
                     study_lock, verify_zoo_entry, write_design)
from .names import NamesCallback, cohort_space, fixed_space, grid_space, setting_names, trial_dirname, trial_name
from .plan import TrialContext, cohorts_apply, plan_cohorts, plan_trials
from .preflight import check_cluster, preflight_spec
from .progress import MODES as PROGRESS_MODES
from .progress import TEACHERS, TRIALS, ProgressCallback, StudyMonitor
from .runtime import RayInfo, max_concurrent_trials, ray_session
from .spec import PENDING_TEACHER, Resources, StudySpec
from .trial import EVAL, REPORT_KEY, inline_trainable, train_trainable
from .zoo import RECORD_STUDY, TeacherZoo, ZooEntry

log = logging.getLogger(__name__)
TUNE_NAME = "tune"


class StudyExistsError(RuntimeError):
    """The study already has results and neither resume nor overwrite was asked for."""


class DashboardMissingError(RuntimeError):
    """Train-backed trials may be stopped but Ray's state API (dashboard) is unavailable."""


def study_paths(results_root: str | Path, name: str) -> dict[str, Path]:
    root = Path(results_root).expanduser().resolve()
    d = root / name
    return {"root": root, "study": d, "runs": d / "runs", "storage": d / "ray", "tune": d / "ray" / TUNE_NAME,
            "optuna": d / OPTUNA_FILE}


def choose_shape(spec: StudySpec, info: RayInfo) -> tuple[str, bool]:
    """(trial shape to use, whether the driver releases stopped trials' placement groups)."""
    if spec.shape != "train":
        return "inline", False
    if spec.scheduler == "none" or info.state_api:
        return "train", True  # releasing from the driver as well only makes it faster
    msg = ("Ray's state API (served by the dashboard, ray[default]) is unavailable, and ASHA may stop "
           "Train-backed trials: Ray Train 2.58 frees a stopped run's worker placement group only through "
           "that API, so later trials would wait for workers forever.")
    if spec.on_missing_dashboard == "error":
        raise DashboardMissingError(msg + " Start Ray with the dashboard (ray start --head --include-dashboard=true) "
                                    "or use shape='inline'.")
    if spec.on_missing_dashboard == "inline":
        warnings.warn(msg + " Falling back to inline trials.", RuntimeWarning, stacklevel=3)
        return "inline", False
    warnings.warn(msg + " The driver releases stopped trials' placement groups itself.", RuntimeWarning, stacklevel=3)
    return "train", True


def run_study(spec: StudySpec, *, results_root: str | Path = "results", address: str | None = None,
              resume: bool = False, overwrite: bool = False, zoo: str | Path | None = None,
              verbose: int = 0, dashboard: bool = True, num_cpus: int | None = None,
              preflight: bool = True, progress: str = "auto", mlflow: str | None = None) -> pd.DataFrame:
    """Run (or, with ``resume``, continue) ``spec``; returns the study's ``trials`` table.

    ``address``: join that Ray cluster instead of starting local Ray. ``zoo``: teacher zoo
    directory (default ``<results>/_zoo``). ``overwrite`` deletes the study's previous results.
    ``preflight``: check data, teacher checkpoints, the search space and the cluster's resources
    first (:mod:`segdistill.study.preflight`); a problem raises ``PreflightError`` before any
    Ray job starts and before anything is overwritten.
    ``progress``: the live view of the study (:mod:`segdistill.study.progress`): "auto" (a live
    display on a terminal, plain lines otherwise), "live", "plain" or "off". ``verbose`` > 0 adds
    Ray Tune's own status tables and Ray's INFO logs. ``mlflow``: a tracking URI; every
    configuration is logged as an MLflow run of the experiment ``spec.name``
    (:mod:`segdistill.study.mlflow_log`); an unreachable URI raises ``MlflowUnavailableError``
    before anything trains.
    """
    if progress not in PROGRESS_MODES:
        raise ValueError(f"run_study(progress={progress!r}): must be one of {PROGRESS_MODES}")
    root = check_results_root(results_root)
    if zoo is not None:
        check_results_root(zoo, what="--zoo")
    with interrupt.interruptible(), study_lock(root, spec.name):
        if preflight:
            preflight_spec(spec)
        sink = None
        if mlflow:  # before anything trains: an unusable URI is an error now, not after the teacher
            sink = mlflow_log.connect(mlflow, spec.name, tags={"segdistill.study": spec.name, **dict(spec.tags)})
        try:
            return _run_study(spec, results_root=root, address=address, resume=resume, overwrite=overwrite,
                              zoo=zoo, verbose=verbose, dashboard=dashboard, num_cpus=num_cpus, preflight=preflight,
                              progress=progress, sink=sink)
        finally:
            if sink is not None:
                sink.close()


def _run_study(spec: StudySpec, *, results_root: str | Path, address: str | None, resume: bool, overwrite: bool,
               zoo: str | Path | None, verbose: int, dashboard: bool, num_cpus: int | None, preflight: bool,
               progress: str, sink: mlflow_log.MlflowSink | None) -> pd.DataFrame:
    paths = study_paths(results_root, spec.name)
    zoo_ = TeacherZoo(zoo if zoo is not None else paths["root"] / "_zoo")
    has_results = (paths["study"] / "trials").is_dir() and any((paths["study"] / "trials").glob("*.parquet"))
    if overwrite and paths["study"].exists():
        shutil.rmtree(paths["study"])
    elif has_results and not resume:
        raise StudyExistsError(f"study {spec.name!r} already has results in {paths['study']}; pass resume=True "
                               "(--resume) to continue it or overwrite=True (--overwrite) to start again")
    elif not resume:  # leftovers of a run that recorded nothing: start clean
        for stale in (paths["optuna"], paths["runs"], paths["storage"]):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    base_flat = spec.base.to_flat()
    if spec.teacher_cache and not base_flat.get("run.teacher_cache"):
        base_flat["run.teacher_cache"] = str(zoo_.root / "_logits")
    names = setting_names(spec.expand_variants(), base_flat)  # the user's variants, before the zoo filled them
    design = design_of(spec, names)
    # --resume of another design: refused before Ray starts, or the added configurations planned
    added, parts = check_design(paths["study"], design, spec.name) if resume else (DesignChange(), [])
    parts = parts or [{"name": TUNE_NAME, "settings": list(names), "seeds": [int(x) for x in spec.seeds]}]
    if added:
        parts = parts + _added_parts(parts, added, names, spec.seeds)
        log.warning("--resume adds %s to study %s", _describe_added(added), spec.name)
    paths["study"].mkdir(parents=True, exist_ok=True)
    write_design(paths["study"], design, parts)
    if verbose:
        logging.getLogger("ray").setLevel(logging.INFO)
    with ray_session(address, dashboard=dashboard, num_cpus=num_cpus) as info, \
            StudyMonitor(spec.name, progress) as monitor:
        shape, release = choose_shape(spec, info)
        if preflight:
            check_cluster(spec, shape, info.resources)
        variants, entries = ensure_teachers(spec, zoo_, info, shape, verbose=verbose, monitor=monitor)
        for entry in entries:
            zoo_.copy_record(entry, paths["root"], spec.name)
            if sink is not None:
                sink.finish(str(paths["root"]), spec.name, entry.record_id, name=teacher_name(entry.cfg))
        # every configuration any experiment of the study runs, planned once (its TrainConfig built here)
        seeds = list(dict.fromkeys([int(x) for x in spec.seeds] + [int(x) for part in parts for x in part["seeds"]]))
        base = spec.base.replace(**{"run.teacher_cache": base_flat["run.teacher_cache"]}) \
            if base_flat["run.teacher_cache"] != spec.base.run.teacher_cache else spec.base
        ctx = TrialContext(study=spec.name, results_root=str(paths["root"]), runs_root=str(paths["runs"]),
                           storage_path=str(paths["storage"]),
                           plans=plan_trials(base, variants, names, seeds, spec.tags, shape),
                           shape=shape, resources=spec.resources, max_failures=spec.max_failures, verbose=verbose)
        for part in parts:  # the study's first experiment, then those --resume added settings/seeds with
            part_names = [n for n in names if n in set(part["settings"])]
            part_seeds = [int(x) for x in part["seeds"]]
            part_variants = [variants[names.index(n)] for n in part_names]
            cohorts = _cohort_plan(spec, ctx, info, shape, part_names, part_seeds) if cohorts_apply(spec, shape) else []
            if spec.search == "optuna":
                param_space: dict[str, Any] = fixed_space(names[0], spec.seeds[0])
            elif cohorts and max(len(c) for c in cohorts) > 1:
                param_space = cohort_space(cohorts)
            else:
                param_space = grid_space(part_variants, part_names, part_seeds, base_flat)
            planned = spec.num_trials() if spec.search == "optuna" else len(part_names) * len(part_seeds) * spec.num_samples
            grid = _tune(ctx, spec, info, param_space, name=part["name"], resume=resume, release=release,
                         optuna_path=paths["optuna"], verbose=verbose, monitor=monitor, sink=sink, phase=TRIALS,
                         planned=planned)
            reconcile(ctx, grid)
        if sink is not None:  # what the live path missed (reconciled records, a resumed study's earlier trials)
            sink.sync(str(paths["root"]), spec.name)
    return read_trials(paths["root"], spec.name)


def _added_parts(parts: Sequence[Mapping[str, Any]], added: DesignChange, names: Sequence[str],
                 seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The experiments that run exactly the configurations ``added`` brings: new settings with every
    seed, and the recorded settings with the new seeds (each a rectangular grid)."""
    n = len(parts)
    old_names = [x for x in names if x not in set(added.new_settings)]
    out = []
    if added.new_settings:
        n += 1
        out.append({"name": f"{TUNE_NAME}_add{n - 1}", "settings": list(added.new_settings),
                    "seeds": [int(x) for x in seeds]})
    if added.new_seeds and old_names:
        n += 1
        out.append({"name": f"{TUNE_NAME}_add{n - 1}", "settings": old_names, "seeds": [int(x) for x in added.new_seeds]})
    return out


def _describe_added(added: DesignChange) -> str:
    bits = []
    if added.new_settings:
        bits.append(f"{len(added.new_settings)} setting(s) ({', '.join(added.new_settings)})")
    if added.new_seeds:
        bits.append(f"seed(s) {', '.join(map(str, added.new_seeds))}")
    return " and ".join(bits)


def teacher_name(cfg: Any) -> str:
    """``"teacher deeplabv3_tiny_r101 on synthetic"``: how views and MLflow name a zoo teacher."""
    return f"teacher {cfg.model.arch} on {cfg.data.name}"


def _cohort_plan(spec: StudySpec, ctx: TrialContext, info: RayInfo, shape: str, settings: Sequence[str],
                 seeds: Sequence[int]) -> list[list[list[Any]]]:
    """The planned configurations of ``settings`` x ``seeds`` grouped into cohorts (see :func:`plan_cohorts`):
    per cohort its members as ``[setting name, seed]``."""
    configs = [(p.setting, p.seed, p.config) for p in ctx.plans if p.setting in set(settings) and p.seed in set(seeds)]
    slots = spec.max_concurrent or max_concurrent_trials(info.resources, spec.resources.per_trial(shape))
    return plan_cohorts(configs, slots, spec.cohort_size)


def _trainable(ctx: TrialContext) -> Any:
    fn = tune.with_parameters(train_trainable if ctx.shape == "train" else inline_trainable, ctx=ctx)
    r = ctx.resources
    if ctx.shape == "train":
        # The trial is only a driver for its Train workers: no CPU (a token of memory, since Tune
        # rejects an empty resource request), so its workers can use every core.
        fn = tune.with_resources(fn, {"CPU": 0, "memory": 1 << 20})
    else:
        fn = tune.with_resources(fn, {"CPU": r.cpus, "GPU": r.gpus})
    return _named(wrap_function(fn), fn.__name__)


def _named(cls: type, name: str) -> type:
    """The trainable class (Tune's name for it: ``name``), its actors shown by their trial's name: Ray
    takes an actor's ``repr`` for the dashboard's actor list and the prefix of its forwarded output
    (``(beta=0.3 seed 1 (8452e_00003) pid=...)``) instead of ``inline_trainable``."""

    class Named(cls):  # type: ignore[misc, valid-type]
        def __repr__(self) -> str:
            return getattr(self, "trial_name", None) or super().__repr__()

    Named.__name__ = Named.__qualname__ = name
    return Named


class EvalOnlyASHA(ASHAScheduler):
    """ASHA on evaluation results only: progress reports (:data:`~segdistill.study.trial.REPORT_KEY`
    ``"progress"``) carry the last evaluation's value and must not count as a new one at a rung."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(REPORT_KEY, EVAL) != EVAL:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _tune(ctx: TrialContext, spec: StudySpec, info: RayInfo, param_space: Mapping[str, Any], *, name: str,
          resume: bool, release: bool, optuna_path: Path | None, verbose: int, scheduler: str | None = None,
          search: str | None = None, num_samples: int | None = None, monitor: StudyMonitor | None = None,
          sink: mlflow_log.MlflowSink | None = None, phase: str = TRIALS, planned: int = 0) -> Any:
    """Run (or restore and continue) one Tune experiment ``<storage>/<name>``. ``monitor`` and ``sink``
    receive its trials' progress (the callbacks find them by the experiment's directory, also when
    Tune restores its pickled callbacks on resume)."""
    storage = Path(ctx.storage_path)
    exp_dir = storage / name
    key = str(exp_dir)
    if monitor is not None:
        monitor.attach(key, ctx, phase, planned or 1, ctx.plans[0].config.optim.iterations if ctx.plans else 0)
    if sink is not None:
        mlflow_log.attach(key, ctx, sink)
    try:
        with live_context(ctx):  # also the context of the callbacks a restored experiment unpickles
            return _fit(ctx, spec, info, param_space, name=name, resume=resume, release=release,
                        optuna_path=optuna_path, verbose=verbose, scheduler=scheduler, search=search,
                        num_samples=num_samples, key=key)
    finally:
        if monitor is not None:
            monitor.detach(key)
        mlflow_log.detach(key)


def _fit(ctx: TrialContext, spec: StudySpec, info: RayInfo, param_space: Mapping[str, Any], *, name: str,
         resume: bool, release: bool, optuna_path: Path | None, verbose: int, scheduler: str | None,
         search: str | None, num_samples: int | None, key: str) -> Any:
    scheduler = spec.scheduler if scheduler is None else scheduler
    search = spec.search if search is None else search
    storage = Path(ctx.storage_path)
    exp_dir = storage / name
    trainable = _trainable(ctx)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        log.info("resuming %s from %s", spec.name, exp_dir)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=dict(param_space))
        return _interruptible_fit(tuner, ctx, verbose)
    if exp_dir.exists():  # a stale experiment (not resumable or not asked to resume)
        shutil.rmtree(exp_dir)
    search_alg = None
    if search == "optuna":
        assert optuna_path is not None
        optuna_path.parent.mkdir(parents=True, exist_ok=True)
        search_alg = ResumableOptunaSearch(
            space=spec.space, metric=spec.metric, mode=spec.mode,
            sampler=optuna.samplers.TPESampler(seed=spec.search_seed, multivariate=True, group=True),
            storage=JournalStorage(JournalFileBackend(str(optuna_path))), study_name=spec.name)
    sched = None
    if scheduler == "asha":
        iters = [p.config.optim.iterations for p in ctx.plans]
        evals = [p.config.run.eval_every for p in ctx.plans if p.config.run.eval_every]
        sched = EvalOnlyASHA(time_attr="iteration", max_t=max(iters),
                              grace_period=spec.asha_grace or (min(evals) if evals else 1),
                              reduction_factor=spec.asha_reduction)
    per_trial = spec.resources.per_trial(ctx.shape)
    concurrent = spec.max_concurrent or max_concurrent_trials(info.resources, per_trial)
    tuner = tune.Tuner(
        trainable,
        param_space=dict(param_space),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=search_alg, scheduler=sched,
                                    num_samples=spec.num_samples if num_samples is None else num_samples,
                                    max_concurrent_trials=concurrent, reuse_actors=False,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
        # StudyCallback first: it records stopped and failed trials, which the others then read
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=verbose,
                                  callbacks=[NamesCallback(), StudyCallback(ctx, release_pgs=release),
                                             ProgressCallback(key), mlflow_log.MlflowCallback(key)],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures)),
    )
    return _interruptible_fit(tuner, ctx, verbose)


def _interruptible_fit(tuner: Any, ctx: TrialContext, verbose: int) -> Any:
    """``tuner.fit()``; after SIGINT/SIGTERM (:mod:`segdistill.study.interrupt`) every trial without a
    record is recorded ``interrupted`` and :class:`~segdistill.study.interrupt.StudyInterrupted` raised."""
    grid = None
    record_now = functools.partial(_record_started, ctx)
    with _tune_output(verbose), interrupt.tune_loop(), interrupt.on_abandon(record_now):
        try:
            grid = tuner.fit()
        except Exception:
            if interrupt.interrupted() is None:
                raise
            log.debug("Tune ended with an error after the interrupt", exc_info=True)
    if interrupt.interrupted() is not None:
        try:
            reconcile(ctx, grid if grid is not None else started_results(ctx))
        except Exception:  # noqa: BLE001 - the records are bookkeeping; the stop must go on
            log.exception("could not record the interrupted trials of %s", ctx.study)
        interrupt.raise_if_interrupted()
    return grid


def _record_started(ctx: TrialContext) -> None:
    """Record the trials this driver saw start (and that have no record) from their checkpoints on disk."""
    reconcile(ctx, started_results(ctx))


@contextlib.contextmanager
def _tune_output(verbose: int) -> Iterator[None]:
    """Tune's console output only when ``verbose``: its newer output engine prints an experiment
    header, the results directory and a TensorBoard hint whatever the verbosity; the legacy
    reporter, at verbosity 0, prints nothing (the study's own view shows the trials)."""
    if verbose:
        yield
        return
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that tolerates results for trials the persistent Optuna study already closed.

    After a driver crash, Tune's last experiment snapshot can predate a trial's completion, which
    the journal storage already holds; Tune then restarts that trial and any result it reports
    must not crash the study (``UpdateFinishedTrialError``).
    """

    def restore(self, checkpoint_path: str) -> None:
        """Restore, then close as FAIL the Optuna trials suggested after Tune's last snapshot (their
        Tune trials are unknown to the restored experiment and will never report)."""
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in known:
                try:
                    self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                except Exception as exc:  # noqa: BLE001
                    log.debug("could not close orphan Optuna trial %s: %s", t.number, exc)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(REPORT_KEY, EVAL) != EVAL:  # progress reports are not new intermediate values
            return
        try:
            super().on_trial_result(trial_id, result)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError) as exc:
            log.debug("ignoring a result for closed Optuna trial %s: %s", trial_id, exc)


def ensure_teachers(spec: StudySpec, zoo: TeacherZoo, info: RayInfo, shape: str, *, verbose: int = 0,
                    monitor: StudyMonitor | None = None) -> tuple[list[dict[str, Any]], list[ZooEntry]]:
    """Fill every distilling variant's teacher from the zoo, training missing teachers first (once).

    Returns the variants with ``distill.teacher_checkpoint`` set and the zoo entries used.
    """
    variants: list[dict[str, Any]] = []
    entries: dict[str, ZooEntry] = {}
    for v, cfg, teacher_cfg in zip(spec.expand_variants(), spec.variant_configs, spec.teacher_configs):
        v = dict(v)
        if teacher_cfg is not None and cfg.distill.teacher_checkpoint in ("", PENDING_TEACHER):
            entry = zoo.entry(teacher_cfg)
            entries.setdefault(entry.record_id, entry)
            v["distill.teacher_arch"] = entry.cfg.model.arch
            v["distill.teacher_checkpoint"] = str(entry.model_path)
        variants.append(v)
    # One lock per zoo entry (sorted, so two drivers never wait on each other in a cycle): a teacher
    # two studies need is trained once, by whichever driver locks it first; the other waits and uses it.
    with contextlib.ExitStack() as stack:
        for e in sorted(entries.values(), key=lambda e: str(e.dir)):
            stack.enter_context(flock_file(zoo.entry_lock_path(e), what=f"zoo teacher {e.dir}", wait=True,
                                           on_wait=lambda holder, e=e: log.warning(
                                               "waiting for zoo teacher %s, locked by %s", e.dir, holder)))
        missing = [e for e in entries.values() if not _usable(e)]
        if missing:
            train_teachers(missing, zoo, spec, info, shape, verbose=verbose, monitor=monitor)
        still = [e for e in missing if not e.exists()]
        if still:
            raise ZooEntryError(f"teacher training did not produce {', '.join(str(e.model_path) for e in still)}; "
                                f"see the teacher records in {zoo.records_root}")
        for e in missing:
            why = verify_zoo_entry(e.model_path)
            if why is not None:
                raise ZooEntryError(f"zoo teacher {e.model_path} is unusable right after training ({why})")
    return variants, list(entries.values())


def _usable(entry: ZooEntry) -> bool:
    """True if ``entry``'s ``model.pt`` exists and loads; an unreadable one (truncated, empty, foreign)
    is moved aside (``model.pt.corrupt-<time>``) so it is retrained, never handed to N trials."""
    if not entry.exists():
        if entry.dir.is_dir() and (entry.dir / "config.json").is_file():
            log.warning("zoo teacher %s is missing; training it again", entry.model_path)
        return False
    why = verify_zoo_entry(entry.model_path)
    if why is None:
        return True
    moved = set_aside(entry.model_path)
    log.warning("zoo teacher %s is unreadable (%s); moved it to %s and training it again",
                entry.model_path, why, moved.name)
    return False


def train_teachers(entries: Sequence[ZooEntry], zoo: TeacherZoo, spec: StudySpec, info: RayInfo, shape: str,
                   *, verbose: int = 0, monitor: StudyMonitor | None = None) -> None:
    """Train zoo teachers as Tune trials (one per entry, in parallel where resources allow)."""
    variants = []
    for e in entries:
        zoo.forget_record(e)  # a record of an earlier training whose model.pt is gone would skip the retraining
        e.write_config()
        flat = e.training_config().to_flat()
        flat.update({"tag.record_id": e.record_id, "tag.role": "teacher"})
        variants.append(flat)
    names = setting_names(variants, spec.base.to_flat(), explicit=[teacher_name(e.cfg) for e in entries])
    # only on a Ray of our own: on a joined cluster other jobs may hold CPUs a teacher would wait for
    resources = (teacher_resources(spec.resources, shape, info.resources, len(entries), largest_node_cpus())
                 if info.started_here else spec.resources)
    ctx = TrialContext(study=RECORD_STUDY, results_root=str(zoo.records_root), runs_root=str(zoo.root / "_runs"),
                       storage_path=str(zoo.root / "_ray"),
                       plans=plan_trials(spec.base, variants, names, None, {**dict(spec.tags), "role": "teacher"}, shape),
                       shape=shape, resources=resources, max_failures=spec.max_failures, verbose=verbose)
    name = "teachers_" + "_".join(sorted(e.key[2] for e in entries))[:80]
    teacher_spec = spec.replace(scheduler="none", search="grid", resources=resources)
    space = grid_space(variants, names, (), spec.base.to_flat(), with_seed=False)
    # A fresh Tune experiment each time (its trials resume from the entries' own checkpoints): a finished
    # experiment restored would not train a teacher whose model.pt has gone since.
    _tune(ctx, teacher_spec, info, space, name=name, resume=False, release=shape == "train", optuna_path=None,
          verbose=verbose, scheduler="none", search="grid", num_samples=1, monitor=monitor, phase=TEACHERS,
          planned=len(entries))


def teacher_resources(students: Resources, shape: str, cluster: Mapping[str, float], teachers: int,
                      node_cpus: float | None = None) -> Resources:
    """What each of ``teachers`` teacher trials holds (on a Ray the study started): on CPU-only
    inline trials, an equal share of the cluster's CPUs (at most one node's, ``node_cpus``; at least
    the students' ``cpus``), so that a lone teacher trains on every core (its ``run.threads``, when 0,
    follows: :func:`~segdistill.study.trial.trial_threads`) instead of on one while the others idle;
    otherwise the students' resources."""
    if shape != "inline" or students.gpus > 0:
        return students
    share = float(cluster.get("CPU", 0.0)) / max(1, teachers)
    if node_cpus is not None:
        share = min(share, node_cpus)
    return Resources(cpus=max(students.cpus, math.floor(share)), gpus=0.0, num_workers=students.num_workers)


def largest_node_cpus() -> float | None:
    """The most CPUs one alive node of the connected Ray cluster has (None if unknown)."""
    try:
        cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - only a cap
        return None
    return max(cpus) if cpus else None


def teachers_only(spec: StudySpec, *, results_root: str | Path = "results", address: str | None = None,
                  zoo: str | Path | None = None, verbose: int = 0, dashboard: bool = True, progress: str = "auto",
                  mlflow: str | None = None) -> pd.DataFrame:
    """Ensure every teacher ``spec`` needs is in the zoo (training missing ones); record them in
    the study ``spec.name`` (role = teacher) and return its trials table. No student runs.
    ``progress``, ``verbose`` and ``mlflow`` as for :func:`run_study`."""
    t0 = time.time()
    root = check_results_root(results_root)
    if zoo is not None:
        check_results_root(zoo, what="--zoo")
    with interrupt.interruptible(), study_lock(root, spec.name):
        return _teachers_only(spec, results_root=root, address=address, zoo=zoo, verbose=verbose, dashboard=dashboard,
                              progress=progress, mlflow=mlflow, t0=t0)


def _teachers_only(spec: StudySpec, *, results_root: Path, address: str | None, zoo: str | Path | None, verbose: int,
                   dashboard: bool, progress: str, mlflow: str | None, t0: float) -> pd.DataFrame:
    paths = study_paths(results_root, spec.name)
    zoo_ = TeacherZoo(zoo if zoo is not None else paths["root"] / "_zoo")
    preflight_spec(spec)
    sink = mlflow_log.connect(mlflow, spec.name, tags={"segdistill.study": spec.name}) if mlflow else None
    try:
        if verbose:
            logging.getLogger("ray").setLevel(logging.INFO)
        with ray_session(address, dashboard=dashboard) as info, StudyMonitor(spec.name, progress) as monitor:
            shape, _ = choose_shape(spec, info)
            check_cluster(spec, shape, info.resources)
            _, entries = ensure_teachers(spec, zoo_, info, shape, verbose=verbose, monitor=monitor)
        for entry in entries:
            zoo_.copy_record(entry, paths["root"], spec.name)
            if sink is not None:
                sink.finish(str(paths["root"]), spec.name, entry.record_id, name=teacher_name(entry.cfg))
    finally:
        if sink is not None:
            sink.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = read_trials(paths["root"], spec.name)
    df.attrs["wall_time_s"] = time.time() - t0
    return df
