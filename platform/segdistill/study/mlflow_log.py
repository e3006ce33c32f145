"""Log a study to MLflow: the study is an MLflow experiment, each configuration an MLflow run.

``run_study(spec, mlflow="http://127.0.0.1:5000")`` (``--mlflow URI`` on every experiment script)
logs, for every configuration (each cohort member and the teacher included, one run each):

- params: every field of its ``TrainConfig`` (flat keys, ``distill.beta``);
- tags: ``segdistill.study``, ``segdistill.record_id`` (its Parquet ``trial_id``), ``setting``,
  ``role``, ``status``, ``group``, ``cohort_id``, ``error_reason`` where they apply;
- metrics with their step (the iteration): at each evaluation ``val/miou``, ``val/pixel_acc``,
  ``val/mean_acc``, ``val/best_miou`` while the trial runs, the loss terms, ``lr`` and ``images_per_s``
  of its progress reports, and when it ends every point of its Parquet curves not logged yet;
- final results: ``last_evals_miou`` (the reported metric), ``final_miou``, ``best_miou``, ``pixel_acc``, ``params``, ``flops``, ``wall_time_s``,
  ``images_per_s``, ``iterations_done`` and per class ``class/iou/<name>``, ``class/acc/<name>``,
  ``class/td_ntd/<name>``, plus the per-class table as the artifact ``per_class.csv``;
- the run's status: FINISHED (completed, stopped early) or FAILED.

The driver does all of it (trials never talk to MLflow), in one background thread, so a slow
server never slows the study; the Parquet records stay the source of truth and a final pass
(:meth:`MlflowSink.sync`) logs every record the live path missed, also on ``--resume`` (runs are
found again by their ``segdistill.record_id`` tag, so nothing is logged twice). An unreachable
tracking URI is refused before anything trains (:func:`connect`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
from ray.tune import Callback

from ..config import flat_keys
from ..results import part_path
from .names import MEMBERS_KEY, member_label, searched_keys, trial_label
from .plan import member_config, trial_members
from .trial import EVAL, PROGRESS, REPORT_KEY

log = logging.getLogger(__name__)

RECORD_TAG = "segdistill.record_id"
STUDY_TAG = "segdistill.study"
EVAL_METRICS = {"val_miou": "val/miou", "val_pixel_acc": "val/pixel_acc", "val_mean_acc": "val/mean_acc",
                "val_best_miou": "val/best_miou"}
FINAL_METRICS = ("last_evals_miou", "final_miou", "best_miou", "pixel_acc", "params", "flops", "wall_time_s", "images_per_s",
                 "iterations_done", "restarts")
TAG_COLUMNS = ("role", "group", "setting", "preset", "status", "error_reason", "failed_at_iteration", "cohort_id",
               "cohort_size", "tune_trial_id", "trial_shape", "device", "git_sha")
CONFIG_KEYS = flat_keys()  # a record's columns that can be config values (every method's): the run's params
_BATCH = 100  # MLflow's limit of params (and tags) per log_batch request
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


class MlflowUnavailableError(RuntimeError):
    """The MLflow tracking URI cannot be used (not reachable, not an MLflow server, mlflow missing)."""


def _mlflow() -> Any:
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # an optional extra
        raise MlflowUnavailableError("--mlflow needs the mlflow package: pip install 'segdistill[mlflow]'") from exc
    return MlflowClient


@contextlib.contextmanager
def _short_http(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP client without its retries (7, with back-off: minutes) for a quick probe."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def metric_name(text: str) -> str:
    """A valid MLflow metric/param key: characters outside ``[A-Za-z0-9_-. /]`` become ``_``."""
    return _BAD_CHARS.sub("_", str(text))[:250]


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _param_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if hasattr(value, "item"):  # numpy scalars from Parquet
        value = value.item()
    return str(value)[:6000]


def connect(uri: str, experiment: str, *, tags: Mapping[str, Any] | None = None, timeout_s: int = 10) -> "MlflowSink":
    """Open ``uri``, check that it answers as an MLflow tracking server within ``timeout_s`` and make
    (or find) the experiment ``experiment``; raises :class:`MlflowUnavailableError` naming the URI."""
    client_cls = _mlflow()
    # the sink's own requests: a couple of retries, not MLflow's default of minutes; and no
    # "View run ... at: URL" line on stdout for every run that ends
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with _short_http(timeout_s):
        try:
            client = client_cls(tracking_uri=uri)
            client.search_experiments(max_results=1)
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(
                experiment, tags={k: _param_value(v) for k, v in (tags or {}).items()})
            if exp is not None and exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        except MlflowUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection refused, DNS, HTTP errors, bad store URIs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MlflowUnavailableError(
                f"MLflow tracking URI {uri!r} cannot be used ({type(exc).__name__}: {first[:300]}); start the "
                f"server (e.g. mlflow server --host 127.0.0.1 --port 5000) or fix --mlflow; nothing was trained"
            ) from None
    sink = MlflowSink(client, uri, exp_id, experiment)
    print(f"MLflow: study {experiment!r} logs to experiment {exp_id} at {sink.experiment_url()}", flush=True)
    return sink


def run_name(row: Mapping[str, Any]) -> str:
    """A run name for a Parquet trials row the live path did not name: ``"teacher <arch> on <data>"``,
    or its setting (or method) and seed."""
    if row.get("role") == "teacher":
        return f"teacher {row.get('model.arch')} on {row.get('data.name')}"
    what = row.get("setting") if _param_value(row.get("setting")) else f"method={row.get('distill.method')}"
    return f"{what} seed {_param_value(row.get('run.seed'))}"


class MlflowSink:
    """Writes a study's runs from a background thread (see the module docstring)."""

    def __init__(self, client: Any, uri: str, experiment_id: str, experiment: str) -> None:
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id
        self.experiment = experiment
        self.runs: dict[str, dict[str, Any]] = {}  # record id -> {"id", "done", "params", "steps": {key: {steps}}}
        self.errors: list[str] = []
        self.dropped = 0
        self._queue: queue.Queue[Callable[[], None] | threading.Event | None] = queue.Queue()
        self._existing = self._find_runs()
        self._thread = threading.Thread(target=self._work, name="segdistill-mlflow", daemon=True)
        self._thread.start()

    def experiment_url(self) -> str:
        """Where the experiment is in MLflow's web UI (a tracking server), else the URI."""
        base = self.uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}" if base.startswith(("http://", "https://")) else base

    # -- the worker thread ----------------------------------------------------------------------
    MAX_FAILURES_IN_A_ROW = 3  # then the server is taken to be gone: the rest is dropped (--resume logs it)

    def _work(self) -> None:
        in_a_row = 0
        while True:
            job = self._queue.get()
            if job is None:
                return
            if isinstance(job, threading.Event):  # a flush marker
                job.set()
                continue
            if in_a_row >= self.MAX_FAILURES_IN_A_ROW:
                self.dropped += 1
                continue
            try:
                job()
                in_a_row = 0
            except Exception as exc:  # noqa: BLE001 - logging never stops a study
                in_a_row += 1
                msg = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                if len(self.errors) < self.MAX_FAILURES_IN_A_ROW:
                    log.warning("MLflow (%s): %s", self.uri, msg)
                if in_a_row == self.MAX_FAILURES_IN_A_ROW:
                    log.warning("MLflow (%s): %d writes failed in a row; no more logging in this session (the "
                                "Parquet records are complete: run the study again with --resume and --mlflow "
                                "to log the rest)", self.uri, in_a_row)
                self.errors.append(msg)

    def _submit(self, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
        self._queue.put(lambda: fn(*args, **kw))

    def flush(self, timeout_s: float = 300.0) -> bool:
        """Wait until everything submitted so far is written (at most ``timeout_s``)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 300.0) -> None:
        if not self.flush(timeout_s):
            log.warning("MLflow (%s): gave up waiting for the last writes after %.0f s", self.uri, timeout_s)
        self._queue.put(None)
        self._thread.join(timeout=10)
        if self.errors:
            log.warning("MLflow (%s): %d write(s) failed; the Parquet records are complete, run the study with "
                        "--resume to log what is missing", self.uri, len(self.errors))

    # -- public API (any thread) ---------------------------------------------------------------
    def start(self, record_id: str, *, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
        self._submit(self._start, record_id, name, dict(params), dict(tags))

    def metrics(self, record_id: str, values: Mapping[str, Any], step: int) -> None:
        self._submit(self._metrics, record_id, dict(values), int(step))

    def finish(self, results_root: str, study: str, record_id: str, *, name: str = "",
               tags: Mapping[str, Any] | None = None) -> None:
        """Log the record's Parquet rows (params, curves, final and per-class results) and end its run."""
        self._submit(self._finish, str(results_root), study, record_id, name, dict(tags or {}))

    def sync(self, results_root: str, study: str, names: Mapping[str, str] | None = None) -> None:
        """Make sure every record of ``study`` has a finished run (records the live path missed)."""
        self._submit(self._sync, str(results_root), study, dict(names or {}))

    # -- implementation (worker thread) ---------------------------------------------------------
    def _find_runs(self) -> dict[str, tuple[str, str]]:
        """record id -> (run id, status) of the runs already in the experiment (a resumed study)."""
        out: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            for r in page:
                rid = r.data.tags.get(RECORD_TAG)
                if rid and rid not in out:
                    out[rid] = (r.info.run_id, r.info.status)
            token = getattr(page, "token", None)
            if not token:
                return out

    def _run(self, record_id: str, name: str = "", tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        run = self.runs.get(record_id)
        if run is not None:
            return run
        if record_id in self._existing:
            run_id, status = self._existing[record_id]
            data = self.client.get_run(run_id).data
            run = {"id": run_id, "done": status in ("FINISHED", "FAILED", "KILLED"), "params": set(data.params),
                   "steps": {}}
            if not run["done"]:  # a run the previous session left open: log only the steps it lacks
                for key in data.metrics:
                    run["steps"][key] = {m.step for m in self.client.get_metric_history(run_id, key)}
        else:
            all_tags = {STUDY_TAG: self.experiment, RECORD_TAG: record_id, **(tags or {})}
            r = self.client.create_run(self.experiment_id, run_name=name or record_id,
                                       tags={k: _param_value(v) for k, v in all_tags.items()})
            run = {"id": r.info.run_id, "done": False, "params": set(), "steps": {}}
        self.runs[record_id] = run
        return run

    def _start(self, record_id: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> None:
        run = self._run(record_id, name, tags)
        if not run["done"]:
            self._log_params(run, params)

    def _log_params(self, run: dict[str, Any], params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        todo = [Param(metric_name(k), _param_value(v)) for k, v in sorted(params.items())
                if metric_name(k) not in run["params"]]
        for i in range(0, len(todo), _BATCH):
            self.client.log_batch(run["id"], params=todo[i:i + _BATCH])
        run["params"].update(p.key for p in todo)

    def _log_metrics(self, run: dict[str, Any], points: Sequence[tuple[str, float, int]]) -> None:
        """Log the (key, value, step) points the run does not have yet (one value per key and step)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        todo = []
        for key, value, step in points:
            x = _finite(value)
            key = metric_name(key)
            if x is None or int(step) in run["steps"].setdefault(key, set()):
                continue
            run["steps"][key].add(int(step))
            todo.append(Metric(key, x, now, int(step)))
        for i in range(0, len(todo), 1000):
            self.client.log_batch(run["id"], metrics=todo[i:i + 1000])

    def _metrics(self, record_id: str, values: dict[str, Any], step: int) -> None:
        run = self._run(record_id)
        if not run["done"]:
            self._log_metrics(run, [(k, v, step) for k, v in values.items()])

    def _finish(self, results_root: str, study: str, record_id: str, name: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        path = part_path(results_root, study, "trials", record_id)
        if not path.is_file():
            return
        row = pd.read_parquet(path).iloc[0].to_dict()
        run = self._run(record_id, name or run_name(row),
                        {**tags, **{k: row.get(k) for k in ("role", "setting") if k in row}})
        if run["done"]:
            return
        self._log_params(run, {k: row[k] for k in CONFIG_KEYS if k in row})
        points: list[tuple[str, float, int]] = []
        curves = part_path(results_root, study, "curves", record_id)
        if curves.is_file():
            cdf = pd.read_parquet(curves)
            for rec in cdf.to_dict("records"):
                step = int(rec.get("iteration", 0))
                points += [(k, v, step) for k, v in rec.items() if k not in ("study", "trial_id", "iteration")]
        points.sort(key=lambda p: p[2])
        self._log_metrics(run, points)
        step = int(_finite(row.get("iterations_done")) or 0)
        now = int(time.time() * 1000)
        final = [Metric(k, _finite(row.get(k)), now, step) for k in FINAL_METRICS if _finite(row.get(k)) is not None]
        pc_path = part_path(results_root, study, "per_class", record_id)
        if pc_path.is_file():
            pc = pd.read_parquet(pc_path)
            for rec in pc.to_dict("records"):
                cname = metric_name(rec.get("class_name", rec.get("class_id", "")))
                for col in ("iou", "acc", "td_ntd"):
                    v = _finite(rec.get(col))
                    if v is not None:
                        final.append(Metric(f"class/{col}/{cname}", v, now, step))
            try:
                keep = [c for c in pc.columns if c not in ("study", "trial_id")]
                self.client.log_text(run["id"], pc[keep].to_csv(index=False), "per_class.csv")
            except Exception as exc:  # noqa: BLE001 - artifacts need an artifact store; metrics suffice
                log.warning("MLflow (%s): per_class.csv of %s not stored: %s", self.uri, record_id, exc)
        for i in range(0, len(final), 1000):
            self.client.log_batch(run["id"], metrics=final[i:i + 1000])
        status = str(row.get("status", "completed"))
        run_tags = {k: row.get(k) for k in TAG_COLUMNS if k in row and _param_value(row.get(k)) != ""}
        run_tags.update({k: v for k, v in tags.items() if v is not None})
        run_tags["status"] = status
        items = [RunTag(k, _param_value(v)[:8000]) for k, v in run_tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run["id"], tags=items[i:i + _BATCH])
        self.client.set_terminated(run["id"], "FAILED" if status == "failed" else "FINISHED")
        run["done"] = True

    def _sync(self, results_root: str, study: str, names: dict[str, str]) -> None:
        trials = part_path(results_root, study, "trials", "x").parent
        for path in sorted(trials.glob("*.parquet")) if trials.is_dir() else []:
            rid = path.stem
            self._finish(results_root, study, rid, names.get(rid, ""), {})


# -- the Tune callback -------------------------------------------------------------------------
_ACTIVE: dict[str, tuple[Any, MlflowSink]] = {}
"""Sinks by key (a Tune experiment's directory): Tune pickles its callbacks into the experiment and
gives a resumed study those copies back, so the callback holds only the key."""


def attach(key: str, ctx: Any, sink: MlflowSink) -> None:
    _ACTIVE[key] = (ctx, sink)


def detach(key: str) -> None:
    _ACTIVE.pop(key, None)


class MlflowCallback(Callback):
    """Tune callback on the driver: starts each configuration's run when its trial starts, logs its
    reports, ends it with its Parquet record. A no-op while no sink is attached to its key. Put it
    after StudyCallback (which records stopped and failed trials)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: dict[str, list[tuple[str, str]]] = {}  # trial id -> [(record id, run name)]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        hub = _ACTIVE.get(self.key)
        if hub is None:
            return
        ctx, sink = hub
        config = dict(trial.config or {})
        try:
            members = trial_members(ctx, trial.trial_id, config)
        except Exception:  # noqa: BLE001 - logging never stops a study
            members = []
        out = []
        searched = searched_keys(trial)
        for member in members:
            name = trial_label(trial) if searched else member_label(member.plan.setting, member.plan.seed)
            tags = {k: v for k, v in member.tags(trial.trial_id).items() if isinstance(v, (str, int, float, bool))}
            tags["setting"] = member.plan.setting
            if MEMBERS_KEY in config:
                tags["cohort_id"] = trial.trial_id
            sink.start(member.record_id, name=name, params=member_config(ctx, member).to_flat(), tags=tags)
            out.append((member.record_id, name))
        self.members[trial.trial_id] = out

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        hub = _ACTIVE.get(self.key)
        members = self.members.get(trial.trial_id) or []
        if hub is None or not members or "iteration" not in result:
            return
        kind = result.get(REPORT_KEY, EVAL)
        j = int(result.get("member", 0) or 0)
        if j >= len(members):
            return
        if kind == EVAL:
            values = {name: result[k] for k, name in EVAL_METRICS.items() if k in result}
        elif kind == PROGRESS:
            values = {("loss/" + k[5:] if k.startswith("loss_") else k): v for k, v in result.items()
                      if k.startswith("loss_") or k in ("lr", "images_per_s")}
        else:  # a cohort's closing result, a member's failure: the Parquet record has them
            return
        hub[1].metrics(members[j][0], values, int(result["iteration"]))

    def _end(self, trial: Any) -> None:
        hub = _ACTIVE.get(self.key)
        if hub is None:
            return
        ctx, sink = hub
        for record_id, name in self.members.get(trial.trial_id, []):
            sink.finish(ctx.results_root, ctx.study, record_id, name=name)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial)
