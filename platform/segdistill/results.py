"""The Parquet results store: one part file per trial per table, written atomically.

Layout (``DESIGN.md``, "Results in Parquet")::

    <root>/<study>/trials/<trial_id>.parquet       one row: status, every config field, metrics
    <root>/<study>/per_class/<trial_id>.parquet    one row per class: IoU, acc, pixels, TD, NTD, TD/NTD
    <root>/<study>/curves/<trial_id>.parquet       one row per logged iteration (loss terms, lr, val/miou)
    <root>/<study>/embeddings/<trial_id>.parquet   optional: sampled per-pixel features (paper Fig. 5)
    <root>/<study>/samples/<trial_id>.parquet      optional: a few val predictions (paper Fig. 4)

Every file carries ``segdistill.schema_version``, ``segdistill.study``, ``segdistill.table`` and
``segdistill.trial_id`` in its Parquet key-value metadata; readers refuse a newer schema version
with :class:`SchemaVersionError`. Every row carries ``study`` and ``trial_id``.

Atomicity: each part file is written to ``.<name>.<random>.tmp`` in the same directory, fsynced,
then ``os.replace``-d into place; readers only look at ``*.parquet`` names that do not start with
``.``, so a crash mid-write never yields a readable partial file. ``write_trial`` writes the
``trials`` row *last*: a trial appears in ``trials`` only once its other tables are complete, and
:func:`read_joined` (an inner join on ``trials``) never sees orphans from a crashed write.

Reader conventions: a nonexistent ``root`` raises ``FileNotFoundError``; an existing tree without
files for the requested table (or study) returns an empty DataFrame and emits
:class:`EmptyResultsWarning`. A part file that cannot be parsed is skipped with a
:class:`CorruptResultWarning` (``on_error="warn"``, the default) or raises (``on_error="raise"``).

Config fields keep their dotted names as columns (``"distill.beta"``, ``"model.arch"``); metric
and tag names (``best_miou``, ``role``, ``group``, ...) are plain columns of ``trials``.

This module imports neither Ray nor torch.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .catalog import last_evals_miou

# Schema versions. 1: the first. 2: mIoU by the mmseg convention (IoU over classes with a non-empty
# union; version 1 averaged over the classes present in the labels only), the reference's all-classes
# average as ``final_miou_all_classes``, ``miou_convention`` in ``trials`` naming which mIoU a row
# holds, and ``effective_alpha`` (the L_distill weight trained with; ``distill.alpha`` None = the
# method's reference weight). Version-1 files stay readable: :func:`_read_part` adds ``miou_convention`` = "labels-present"
# to their ``trials`` rows (their ``final_miou_all_classes`` reads NaN: not measured). 3: ``last_evals_miou``
# (``catalog.REPORTED_METRIC``, the mean val mIoU of the last evaluations) in ``trials``; older files
# get it from their own ``curves`` part (its ``val/miou`` rows), as :func:`_read_part` reads them.
SCHEMA_VERSION = 3
MIN_SCHEMA_VERSION = 1  # oldest version the readers still read
MIOU_CONVENTION = "mmseg"  # what this version's best_miou / final_miou / per-class iou mean
MIOU_CONVENTION_V1 = "labels-present"
META_VERSION = b"segdistill.schema_version"
META_STUDY = b"segdistill.study"
META_TABLE = b"segdistill.table"
META_TRIAL = b"segdistill.trial_id"

TABLES = ("trials", "per_class", "curves", "embeddings", "samples")
REQUIRED_TABLES = ("trials", "per_class", "curves")
OPTIONAL_TABLES = ("embeddings", "samples")
KEY_COLUMNS = ("study", "trial_id")
STATUSES = ("completed", "early_stopped", "failed", "pruned", "running")
PER_CLASS_COLUMNS = ("class_id", "class_name", "iou", "acc", "pixels", "td", "ntd", "td_ntd")
METRIC_FIELDS = ("best_miou", "final_miou", "last_evals_miou", "final_miou_all_classes", "effective_alpha", "pixel_acc", "params", "flops", "wall_time_s", "images_per_s",
                 "device", "iterations_done", "checkpoint_dir", "model_path")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+,@-]*$")


class ResultsError(ValueError):
    """A record or a results file is malformed."""


class SchemaVersionError(ResultsError):
    """A results file was written with a schema version this code does not know."""


class EmptyResultsWarning(UserWarning):
    """A read found no part files for the requested table/study."""


class CorruptResultWarning(UserWarning):
    """A part file could not be parsed and was skipped."""


# -- records --------------------------------------------------------------------------------

@dataclass
class Embeddings:
    """Sampled per-pixel features for the t-SNE figure (paper Fig. 5).

    ``features``: (N, D) float; ``labels``: (N,) int class ids; ``tsne``: optional (N, 2)
    precomputed 2-D coordinates (stored as ``tsne_x``/``tsne_y``; NaN when absent).
    """

    features: np.ndarray
    labels: np.ndarray
    tsne: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels).astype(np.int64)
        if self.features.ndim != 2:
            raise ResultsError(f"embeddings.features must be (N, D), got shape {self.features.shape}")
        n = self.features.shape[0]
        if self.labels.shape != (n,):
            raise ResultsError(f"embeddings.labels must be ({n},), got shape {self.labels.shape}")
        if self.tsne is not None:
            self.tsne = np.asarray(self.tsne, dtype=np.float64)
            if self.tsne.shape != (n, 2):
                raise ResultsError(f"embeddings.tsne must be ({n}, 2), got shape {self.tsne.shape}")


@dataclass
class TrialRecord:
    """Everything one finished (or failed) trial contributes to the store.

    ``config``: ``TrainConfig.to_flat()`` (dotted keys, scalars). ``metrics``: scalars such as
    ``best_miou``, ``final_miou``, ``pixel_acc``, ``params``, ``flops``, ``wall_time_s``,
    ``images_per_s``, ``device``, ``git_sha``, ``iterations_done``, ``role`` ("teacher"/"student")
    and free tags (``group``, ``preset``). ``per_class``: dicts with class_id, class_name, iou, acc,
    pixels, td, ntd (``td_ntd`` is derived). ``curves``: dicts with ``iteration`` and any loss
    terms / ``lr`` / ``images_per_s`` / ``val/miou``. ``embeddings``: :class:`Embeddings` (or a
    dict with its fields). ``samples``: dicts with ``image`` (H, W, 3) uint8, ``label`` (H, W),
    ``prediction`` (H, W) and optional ``index``.
    """

    study: str
    trial_id: str
    status: str = "completed"
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    embeddings: Embeddings | None = None
    samples: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        _check_name("study", self.study)
        _check_name("trial_id", self.trial_id)
        if not isinstance(self.status, str) or not self.status:
            raise ResultsError(f"status must be a non-empty string such as {STATUSES}, got {self.status!r}")
        if isinstance(self.embeddings, Mapping):
            self.embeddings = Embeddings(**self.embeddings)
        for key in self.config:
            if "." not in key:
                raise ResultsError(f"config key {key!r} is not a dotted 'section.field' name (use TrainConfig.to_flat())")
        reserved = set(KEY_COLUMNS) | {"status"}
        clash = (set(self.metrics) & (reserved | set(self.config))) | (set(self.config) & reserved)
        if clash:
            raise ResultsError(f"metric/config names collide with reserved or config columns: {sorted(clash)}")


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value) or value.endswith(".tmp"):
        raise ResultsError(f"{what} {value!r} must be a file-name-safe string matching {_NAME_RE.pattern} "
                           "(letters, digits, _ . = + , @ -; not starting with '.')")


# -- frames ---------------------------------------------------------------------------------

def _scalar(value: Any) -> Any:
    """numpy/torch scalars -> Python scalars; everything else unchanged."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, np.ndarray)):
        try:
            return value.item()
        except (ValueError, TypeError):
            return value
    return value


def _ratio(num: Any, den: Any) -> float:
    try:
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0.0:
        return math.nan
    return num / den


def trials_frame(record: TrialRecord) -> pd.DataFrame:
    row: dict[str, Any] = {"study": record.study, "trial_id": record.trial_id, "status": record.status}
    row.update({k: _scalar(v) for k, v in record.config.items()})
    row.update({k: _scalar(v) for k, v in record.metrics.items()})
    row.setdefault("miou_convention", MIOU_CONVENTION)  # schema 2: which mIoU best_miou / final_miou hold
    return pd.DataFrame([row])


def per_class_frame(record: TrialRecord) -> pd.DataFrame:
    rows = []
    for entry in record.per_class:
        row = {"study": record.study, "trial_id": record.trial_id}
        for col in PER_CLASS_COLUMNS[:-1]:
            row[col] = _scalar(entry.get(col, math.nan if col != "class_name" else ""))
        row["td_ntd"] = _ratio(row["td"], row["ntd"])
        row.update({k: _scalar(v) for k, v in entry.items() if k not in row})
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else [*KEY_COLUMNS, *PER_CLASS_COLUMNS])
    for col in ("iou", "acc", "pixels", "td", "ntd", "td_ntd"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["class_id"] = df["class_id"].astype("int64")
    for col in ("study", "trial_id", "class_name"):
        df[col] = df[col].astype(str)
    return df


def curves_frame(record: TrialRecord) -> pd.DataFrame:
    rows = [{"study": record.study, "trial_id": record.trial_id, **{k: _scalar(v) for k, v in e.items()}}
            for e in record.curves]
    if not rows:
        return pd.DataFrame({"study": pd.Series(dtype=str), "trial_id": pd.Series(dtype=str),
                             "iteration": pd.Series(dtype="int64")})
    df = pd.DataFrame(rows)
    if "iteration" not in df:
        raise ResultsError("every curves entry needs an 'iteration'")
    df["iteration"] = df["iteration"].astype("int64")
    for col in df.columns:
        if col not in ("study", "trial_id", "iteration") and df[col].dtype == object:
            converted = pd.to_numeric(df[col], errors="coerce")
            if converted.notna().sum() == df[col].notna().sum():
                df[col] = converted.astype("float64")
    return df


def embeddings_frame(record: TrialRecord) -> pd.DataFrame:
    emb = record.embeddings
    assert emb is not None
    n = emb.features.shape[0]
    tsne = emb.tsne if emb.tsne is not None else np.full((n, 2), np.nan)
    return pd.DataFrame({
        "study": [record.study] * n, "trial_id": [record.trial_id] * n,
        "point": np.arange(n, dtype=np.int64), "label": emb.labels,
        "features": list(emb.features), "tsne_x": tsne[:, 0], "tsne_y": tsne[:, 1],
    })


def samples_frame(record: TrialRecord) -> pd.DataFrame:
    rows = []
    for i, s in enumerate(record.samples or []):
        image = np.ascontiguousarray(np.asarray(s["image"]), dtype=np.uint8)
        label = np.ascontiguousarray(np.asarray(s["label"]), dtype=np.int16)
        pred = np.ascontiguousarray(np.asarray(s["prediction"]), dtype=np.int16)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ResultsError(f"samples[{i}].image must be (H, W, 3) uint8, got shape {image.shape}")
        if label.shape != image.shape[:2] or pred.shape != image.shape[:2]:
            raise ResultsError(f"samples[{i}]: label {label.shape} and prediction {pred.shape} must be {image.shape[:2]}")
        rows.append({"study": record.study, "trial_id": record.trial_id, "sample_index": int(s.get("index", i)),
                     "height": image.shape[0], "width": image.shape[1],
                     "image": image.tobytes(), "label": label.tobytes(), "prediction": pred.tobytes()})
    return pd.DataFrame(rows)


def decode_sample(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A ``samples`` row -> ``{"image": (H, W, 3) uint8, "label": (H, W) int16, "prediction": (H, W) int16}``."""
    h, w = int(row["height"]), int(row["width"])
    return {"image": np.frombuffer(row["image"], dtype=np.uint8).reshape(h, w, 3),
            "label": np.frombuffer(row["label"], dtype=np.int16).reshape(h, w),
            "prediction": np.frombuffer(row["prediction"], dtype=np.int16).reshape(h, w)}


def embedding_matrix(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """An ``embeddings`` frame (one trial) -> ``(features (N, D) float32, labels (N,) int64)``."""
    if df.empty:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.stack([np.asarray(f, dtype=np.float32) for f in df["features"]]), df["label"].to_numpy(np.int64)


_FRAMES = {"trials": trials_frame, "per_class": per_class_frame, "curves": curves_frame,
           "embeddings": embeddings_frame, "samples": samples_frame}


# -- writing --------------------------------------------------------------------------------

def part_path(root: str | os.PathLike, study: str, table: str, trial_id: str) -> Path:
    _check_table(table)
    return Path(root) / study / table / f"{trial_id}.parquet"


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown results table {table!r}; tables are {TABLES}")


def _write_atomic(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` via a fsynced ``.<name>.<random>.tmp`` sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename durable; not supported everywhere (e.g. Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _to_arrow(df: pd.DataFrame, record: TrialRecord, table: str) -> pa.Table:
    tbl = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(tbl.schema.metadata or {})
    meta.update({META_VERSION: str(SCHEMA_VERSION).encode(), META_STUDY: record.study.encode(),
                 META_TABLE: table.encode(), META_TRIAL: record.trial_id.encode()})
    return tbl.replace_schema_metadata(meta)


def write_trial(root: str | os.PathLike, record: TrialRecord) -> list[Path]:
    """Write every table of ``record`` under ``root``; returns the written paths (``trials`` last).

    Re-writing a trial replaces its files; optional tables the new record lacks are removed so a
    trial's files always describe one record.
    """
    written: list[Path] = []
    for table in ("per_class", "curves", "embeddings", "samples", "trials"):
        path = part_path(root, record.study, table, record.trial_id)
        if table == "embeddings" and record.embeddings is None or table == "samples" and not record.samples:
            path.unlink(missing_ok=True)
            continue
        _write_atomic(path, _to_arrow(_FRAMES[table](record), record, table))
        written.append(path)
    return written


# -- reading --------------------------------------------------------------------------------

def _part_files(root: Path, table: str, study: str | Sequence[str] | None) -> list[Path]:
    if study is None:
        studies = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        names = [study] if isinstance(study, str) else list(study)
        studies = [root / s for s in names]
    files: list[Path] = []
    for sdir in studies:
        tdir = sdir / table
        if tdir.is_dir():
            files.extend(sorted(p for p in tdir.glob("*.parquet") if not p.name.startswith(".") and p.is_file()))
    return files


def check_schema(metadata: Mapping[bytes, bytes] | None, path: str | os.PathLike = "<file>") -> int:
    """Return the file's schema version; raise :class:`SchemaVersionError` if missing or unknown."""
    raw = (metadata or {}).get(META_VERSION)
    readable = f"this segdistill reads results schema versions {MIN_SCHEMA_VERSION}..{SCHEMA_VERSION}"
    if raw is None:
        raise SchemaVersionError(f"{path}: no {META_VERSION.decode()} metadata; not a segdistill results file "
                                 f"(or one written before results carried a schema version); {readable}: "
                                 "re-run the study, or move the file out of the results directory")
    try:
        version = int(raw.decode())
    except ValueError as exc:
        raise SchemaVersionError(f"{path}: bad schema version {raw!r}; {readable}") from exc
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"{path}: written with results schema version {version}, but {readable}; "
                                 "upgrade segdistill to read it")
    if version < MIN_SCHEMA_VERSION:
        raise SchemaVersionError(f"{path}: written with results schema version {version}, older than "
                                 f"{MIN_SCHEMA_VERSION}: {readable}; re-run the study with this segdistill")
    return version


def _read_part(path: Path, on_error: str) -> pd.DataFrame | None:
    try:
        tbl = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        if on_error == "raise":
            raise ResultsError(f"cannot read results file {path}: {exc}") from exc
        warnings.warn(f"skipping unreadable results file {path}: {exc}", CorruptResultWarning, stacklevel=3)
        return None
    version = check_schema(tbl.schema.metadata, path)
    df = tbl.to_pandas()
    if version < 2 and (tbl.schema.metadata or {}).get(META_TABLE) == b"trials" and "miou_convention" not in df:
        df["miou_convention"] = MIOU_CONVENTION_V1  # migration: version 1's mIoU averaged labelled classes only
    if version < 3 and (tbl.schema.metadata or {}).get(META_TABLE) == b"trials" and "last_evals_miou" not in df:
        df["last_evals_miou"] = _last_evals_from_curves(path.parent.parent / "curves" / path.name)
    return df


def _last_evals_from_curves(path: Path) -> float:
    """Migration to schema 3: a trial's ``last_evals_miou`` from its ``curves`` part (NaN when that
    part is missing, unreadable or holds no evaluation)."""
    try:
        curves = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException):
        return math.nan
    if "val/miou" not in curves or "iteration" not in curves:
        return math.nan
    evals = curves.loc[curves["val/miou"].notna(), ["iteration", "val/miou"]]
    return last_evals_miou(evals.to_dict("records"))


def read_table(root: str | os.PathLike, table: str, study: str | Sequence[str] | None = None, *,
               on_error: str = "warn") -> pd.DataFrame:
    """Concatenate the part files of ``table`` over all studies under ``root`` (or ``study``).

    Raises ``FileNotFoundError`` if ``root`` does not exist and :class:`SchemaVersionError` on a
    file from a newer schema. No matching files -> empty DataFrame plus :class:`EmptyResultsWarning`.
    Columns missing from some parts (e.g. loss terms of other methods) are NaN.
    """
    _check_table(table)
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results root {str(root)!r} does not exist (or is not a directory)")
    frames = [f for f in (_read_part(p, on_error) for p in _part_files(root, table, study)) if f is not None]
    if not frames:
        where = f"study {study!r}" if study is not None else "any study"
        warnings.warn(f"no {table!r} results for {where} under {str(root)!r}", EmptyResultsWarning, stacklevel=2)
        return pd.DataFrame(columns=list(KEY_COLUMNS))
    nonempty = [f for f in frames if len(f)]
    if not nonempty:
        return frames[0].iloc[0:0].reset_index(drop=True)
    if len(nonempty) == 1:
        return nonempty[0].reset_index(drop=True)
    return pd.concat(nonempty, ignore_index=True, sort=False)


def read_trials(root: str | os.PathLike, study: str | Sequence[str] | None = None, **kw: Any) -> pd.DataFrame:
    return read_table(root, "trials", study, **kw)


def read_per_class(root: str | os.PathLike, study: str | Sequence[str] | None = None, **kw: Any) -> pd.DataFrame:
    return read_table(root, "per_class", study, **kw)


def read_curves(root: str | os.PathLike, study: str | Sequence[str] | None = None, **kw: Any) -> pd.DataFrame:
    return read_table(root, "curves", study, **kw)


def read_joined(root: str | os.PathLike, table: str, study: str | Sequence[str] | None = None,
                **kw: Any) -> pd.DataFrame:
    """``table`` rows with their trial's config/metric columns merged in (inner join on study, trial_id).

    Rows of trials without a ``trials`` row (e.g. a write that crashed) are dropped. Where a
    trial column has the same name as a ``table`` column (e.g. ``images_per_s`` in ``curves``), the
    trial's copy is suffixed ``_trial``.
    """
    _check_table(table)
    rows = read_table(root, table, study, **kw)
    if table == "trials":
        return rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyResultsWarning)
        trials = read_table(root, "trials", study, **kw)
    if rows.empty or trials.empty:
        return rows.iloc[0:0]
    return rows.merge(trials, on=list(KEY_COLUMNS), how="inner", suffixes=("", "_trial"), validate="many_to_one")


# -- provenance -----------------------------------------------------------------------------

def git_sha(path: str | os.PathLike | None = None) -> str:
    """The current commit of the repository holding ``path`` (default: this package), or
    ``$SEGDISTILL_GIT_SHA`` when set, with ``-dirty`` if tracked files changed; "unknown" outside a
    git repository or without git. Never raises."""
    env = os.environ.get("SEGDISTILL_GIT_SHA")
    if env:
        return env
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        if not re.fullmatch(r"[0-9a-f]{7,64}", sha):
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001 - provenance must never break a run
        return "unknown"


def record_from_fit(result: Any, *, study: str, trial_id: str, status: str | None = None,
                    tags: Mapping[str, Any] | None = None, embeddings: Embeddings | Mapping | None = None,
                    samples: list[dict[str, Any]] | None = None) -> TrialRecord:
    """Build a :class:`TrialRecord` from ``segdistill.train.FitResult`` (duck-typed, see CONTRACTS.md).

    ``status`` defaults to "early_stopped" if ``result.stopped_early`` else "completed". ``tags``
    (e.g. ``{"role": "teacher", "group": "beta", "preset": "demo"}``) become ``trials`` columns;
    ``role`` defaults to "student". ``git_sha`` is filled in unless a tag gives it.
    """
    if embeddings is None:
        embeddings = getattr(result, "embeddings", None)
    if samples is None:
        samples = getattr(result, "samples", None)
    cfg = result.config
    config = dict(cfg.to_flat() if hasattr(cfg, "to_flat") else cfg)
    metrics: dict[str, Any] = {name: _scalar(getattr(result, name, None)) for name in METRIC_FIELDS}
    for name in ("checkpoint_dir", "model_path"):
        if metrics[name] is not None:
            metrics[name] = str(metrics[name])
    for name in ("best_miou", "final_miou", "last_evals_miou", "final_miou_all_classes", "effective_alpha",
                 "pixel_acc"):  # -inf/None -> NaN
        if metrics[name] is None:
            metrics[name] = math.nan
        if isinstance(metrics[name], float) and not math.isfinite(metrics[name]):
            metrics[name] = math.nan
    metrics["role"] = "student"
    metrics["git_sha"] = git_sha()
    metrics.update(tags or {})
    if status is None:
        status = "early_stopped" if getattr(result, "stopped_early", False) else "completed"
    return TrialRecord(study=study, trial_id=trial_id, status=status, config=config, metrics=metrics,
                       per_class=[dict(d) for d in (getattr(result, "per_class", None) or [])],
                       curves=[dict(d) for d in (getattr(result, "curves", None) or [])],
                       embeddings=embeddings, samples=samples)


__all__ = [
    "SCHEMA_VERSION", "TABLES", "TrialRecord", "Embeddings", "ResultsError", "SchemaVersionError",
    "EmptyResultsWarning", "CorruptResultWarning", "write_trial", "read_table", "read_trials",
    "read_per_class", "read_curves", "read_joined", "git_sha", "record_from_fit", "decode_sample",
    "embedding_matrix", "part_path", "check_schema",
]
