"""The teacher model zoo: one directory per (architecture, dataset, recipe hash).

Layout::

    <zoo>/<arch>/<dataset>/<recipe hash>/model.pt        weights + arch + num_classes (the artefact)
    <zoo>/<arch>/<dataset>/<recipe hash>/config.json     the teacher's full flat TrainConfig
    <zoo>/<arch>/<dataset>/<recipe hash>/checkpoint/     the trainer's resumable state
    <zoo>/_records/teachers/{trials,per_class,curves}/   the teacher trials' Parquet records

``model.pt`` is written by ``fit`` only at the end of training (atomically), so its presence
means "trained". A study that needs a missing teacher trains it first, once, as a Tune trial
(:func:`segdistill.study.runner.ensure_teachers`); concurrent drivers serialise per entry on
``<zoo>/<arch>/<dataset>/.<hash>.lock`` (``flock``, released when a driver dies), so a teacher two
studies need is trained once. Before trials start each entry's ``model.pt`` is loaded: a missing,
truncated or unreadable one is moved aside and retrained. On a cluster the zoo must be on storage
every node sees.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from ..config import TrainConfig
from ..layout import MODEL_FILE
from ..results import TrialRecord, part_path, read_table, write_trial
from .spec import recipe_hash, safe_name

RECORDS = "_records"
RECORD_STUDY = "teachers"


@dataclass(frozen=True)
class ZooEntry:
    root: Path
    cfg: TrainConfig

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cfg.model.arch, self.cfg.data.name, recipe_hash(self.cfg))

    @property
    def dir(self) -> Path:
        arch, data, h = self.key
        return self.root / safe_name(arch) / safe_name(data) / h

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    @property
    def record_id(self) -> str:
        arch, data, h = self.key
        return safe_name(f"teacher-{arch}-{data}-{h}")

    def exists(self) -> bool:
        return self.model_path.is_file()

    def training_config(self) -> TrainConfig:
        """The teacher's config with ``run.out_dir`` inside the zoo entry."""
        return self.cfg.replace(**{"run.out_dir": str(self.dir)})

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(self.cfg.to_flat(), indent=1, sort_keys=True))


class TeacherZoo:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def entry(self, cfg: TrainConfig) -> ZooEntry:
        return ZooEntry(self.root, cfg)

    @property
    def records_root(self) -> Path:
        return self.root / RECORDS

    def entry_lock_path(self, entry: ZooEntry) -> Path:
        """The per-entry lock file (``<zoo>/<arch>/<dataset>/.<hash>.lock``, beside the entry so
        deleting an entry does not delete its lock)."""
        return entry.dir.parent / f".{entry.dir.name}.lock"

    def forget_record(self, entry: ZooEntry) -> bool:
        """Delete the entry's teacher record (it is rewritten when the teacher is trained again)."""
        removed = False
        for table in ("trials", "per_class", "curves"):
            path = part_path(self.records_root, RECORD_STUDY, table, entry.record_id)
            if path.is_file():
                path.unlink()
                removed = True
        return removed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def copy_record(self, entry: ZooEntry, results_root: str | Path, study: str) -> bool:
        """Copy the teacher's Parquet record into ``study`` (role=teacher), so a study's tables hold
        the teacher it distilled from. False if the zoo has no record for it."""
        tables = {}
        for table in ("trials", "per_class", "curves"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    df = read_table(self.records_root, table, RECORD_STUDY)
            except FileNotFoundError:
                return False
            if df.empty or "trial_id" not in df:
                return False
            tables[table] = df[df["trial_id"] == entry.record_id]
        trials = tables["trials"]
        if trials.empty:
            return False
        row = trials.iloc[0].to_dict()
        config = {k: v for k, v in row.items() if "." in k}
        skip = {"study", "trial_id", "status"}
        metrics = {k: v for k, v in row.items() if "." not in k and k not in skip}
        metrics["role"] = "teacher"

        def rows(df: pd.DataFrame, drop: set[str]) -> list[dict]:
            return [{k: v for k, v in r.items() if k not in drop} for r in df.to_dict("records")]

        record = TrialRecord(study=study, trial_id=entry.record_id, status=str(row.get("status", "completed")),
                             config=config, metrics=metrics,
                             per_class=rows(tables["per_class"], {"study", "trial_id", "td_ntd"}),
                             curves=rows(tables["curves"], {"study", "trial_id"}))
        write_trial(results_root, record)
        return True
