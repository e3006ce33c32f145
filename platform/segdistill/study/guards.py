"""What a study checks and holds before it trains: a usable results root, one driver per study, a
design that ``--resume`` may continue, and readable zoo teachers.

- :func:`check_results_root`: the results root (and the zoo) must be a writable directory with
  room to spare (:data:`MIN_FREE_MB`, ``SEGDISTILL_MIN_FREE_MB``); checked before Ray starts.
- :class:`StudyLock`: ``<results>/.<study>.lock``, held with ``fcntl.flock`` for the driver's
  whole run. The kernel releases it when the holder dies (``kill -9`` included), so it is never
  left stuck; a second driver on the same study is refused at once with the holder's pid, host,
  start time and command line. (Outside the study directory so ``--overwrite`` cannot delete it.)
- :func:`check_design`: ``<results>/<study>/design.json`` records the grid (settings with their
  overrides, seeds, base config, search); ``--resume`` compares the new design with it and
  returns the configurations to add, or raises :class:`DesignChangedError` listing what differs.
- :func:`verify_zoo_entry`: a zoo ``model.pt`` that cannot be read (truncated, empty, not a
  model file) is moved aside so the teacher is retrained, instead of failing every trial.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..checkpoints import read_model_file
from ..config import ConfigError, own_method_keys

log = logging.getLogger(__name__)

MIN_FREE_MB = 200
"""Free space (MiB) the results root must have before a study starts (``SEGDISTILL_MIN_FREE_MB``)."""


class ResultsRootError(ConfigError):
    """The results root (or zoo) is not a writable directory, or its disk is (nearly) full."""


class StudyLockedError(RuntimeError):
    """Another driver is running the same study (same results root and name)."""


class DesignChangedError(RuntimeError):
    """``--resume`` of a study whose design (grid, seeds, base config, search) changed."""


class ZooEntryError(RuntimeError):
    """A zoo teacher file is unusable and cannot be retrained."""


# -- results root -------------------------------------------------------------------------------
def min_free_mb() -> float:
    try:
        return float(os.environ.get("SEGDISTILL_MIN_FREE_MB", MIN_FREE_MB))
    except ValueError:
        return float(MIN_FREE_MB)


def check_results_root(path: str | Path, *, what: str = "--results", need_mb: float | None = None) -> Path:
    """Create ``path`` if needed and check it is a writable directory with ``need_mb`` MiB free
    (default :func:`min_free_mb`); raises :class:`ResultsRootError` naming the path otherwise."""
    p = Path(path).expanduser()
    # the first existing ancestor decides: a regular file anywhere on the path is an error
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a regular file" if probe == p else f"is under {probe}, which is a regular file"
        raise ResultsRootError(f"{what} {str(path)!r}: {where}, not a directory; give a directory for the results")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsRootError(f"{what} {str(path)!r}: cannot create the directory ({exc.strerror or exc})") from None
    test = p / f".write_test_{os.getpid()}"
    try:
        with open(test, "wb") as fh:
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise ResultsRootError(f"{what} {str(path)!r}: not writable ({reason})") from None
    finally:
        with contextlib.suppress(OSError):
            test.unlink()
    need = min_free_mb() if need_mb is None else need_mb
    free = shutil.disk_usage(p).free / (1 << 20)
    if free < need:
        raise ResultsRootError(f"{what} {str(path)!r}: only {free:.0f} MiB free on its disk, a study needs at least "
                               f"{need:.0f} MiB (checkpoints, Ray state, Parquet); free space or give another "
                               "directory (SEGDISTILL_MIN_FREE_MB lowers the bound)")
    return p.resolve()


# -- one driver per study -----------------------------------------------------------------------
def _holder_text(info: Mapping[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started))) if started else "?"
    cmd = info.get("command") or ""
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {when}"
            + (f" ({cmd})" if cmd else ""))


@contextlib.contextmanager
def flock_file(path: Path, *, what: str, wait: bool = False, on_wait: Any = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created; holds the holder's pid/host/start/command as
    JSON). ``wait=False``: raise :class:`StudyLockedError` at once if it is held; ``wait=True``: block
    (``on_wait(holder text)`` is called once before blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                holder = {}
            if not wait:
                raise StudyLockedError(f"{what} is already being run by {_holder_text(holder)}; two drivers on one "
                                       f"study would record every configuration twice. Wait for it to end or stop it "
                                       f"(lock file: {path})") from None
            if on_wait is not None:
                on_wait(_holder_text(holder))
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(shlex.quote(a) for a in sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def study_lock(results_root: Path, name: str) -> contextlib.AbstractContextManager[None]:
    """The study's driver lock (``<results>/.<study>.lock``): a second driver is refused at once."""
    return flock_file(Path(results_root) / f".{name}.lock", what=f"study {name!r} in {results_root}")


# -- the design record ------------------------------------------------------------------------
DESIGN_FILE = "design.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return float(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def design_of(spec: Any, names: Sequence[str]) -> dict[str, Any]:
    """What makes a study's configurations: settings (name -> overrides), seeds, base config, search."""
    variants = spec.expand_variants()
    base = {k: _jsonable(v) for k, v in spec.base.to_flat().items()}
    return {
        "settings": {str(n): {k: _jsonable(v) for k, v in sorted(v.items())} for n, v in zip(names, variants)},
        "seeds": [int(s) for s in spec.seeds],
        "base": base,
        "search": {"search": spec.search, "num_samples": int(spec.num_samples), "search_seed": int(spec.search_seed),
                   "scheduler": spec.scheduler, "space": getattr(spec.space, "__qualname__", None),
                   "teacher": None if spec.teacher is None else
                   {"arch": spec.teacher.arch, **{k: _jsonable(v) for k, v in dict(spec.teacher.overrides).items()}}},
    }


@dataclass(frozen=True)
class DesignChange:
    """What ``--resume`` adds to a recorded design: new settings (run with every seed) and new seeds
    (run with the recorded settings)."""

    new_settings: tuple[str, ...] = ()
    new_seeds: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.new_settings or self.new_seeds)


def _diff_dict(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k not in new:
            out.append(f"{prefix}{k}: {old[k]!r} -> (not set)")
        elif k not in old:
            out.append(f"{prefix}{k}: (not set) -> {new[k]!r}")
        elif old[k] != new[k]:
            out.append(f"{prefix}{k}: {old[k]!r} -> {new[k]!r}")
    return out


def _setting_diff(name: str, old_set: Mapping[str, Any], new_set: Mapping[str, Any], old_base: Mapping[str, Any],
                  new_base: Mapping[str, Any]) -> list[str]:
    """What a setting changes in the configurations it makes: each key it sets, valued as the setting
    or else the base gives it (a value that moved between the base and the setting is no change)."""
    out = []
    for k in sorted(set(old_set) | set(new_set)):
        was, now = old_set.get(k, old_base.get(k)), new_set.get(k, new_base.get(k))
        if was != now:
            out.append(f"setting {name!r}: {k}: {'(not set)' if was is None else repr(was)} -> "
                       f"{'(not set)' if now is None else repr(now)}")
    return out


def compare_designs(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[DesignChange, list[str]]:
    """(what is added, what differs otherwise). Only added settings and added seeds can be run.
    Base configs compare without other methods' parameters (designs recorded before each method
    owned its parameters list every method's defaults in the base)."""
    old_base, new_base = old.get("base", {}), new.get("base", {})
    problems = _diff_dict(own_method_keys(old_base), own_method_keys(new_base), "base config ")
    problems += _diff_dict(old.get("search", {}), new.get("search", {}), "")
    old_set, new_set = old.get("settings", {}), new.get("settings", {})
    for name in old_set:
        if name not in new_set:
            problems.append(f"setting {name!r} was removed")
        elif old_set[name] != new_set[name]:
            problems += _setting_diff(name, old_set[name], new_set[name], old_base, new_base)
    old_seeds, new_seeds = list(old.get("seeds", [])), list(new.get("seeds", []))
    gone = [s for s in old_seeds if s not in new_seeds]
    if gone:
        problems.append(f"seeds {gone} were removed (recorded seeds {old_seeds}, now {new_seeds})")
    added = DesignChange(tuple(n for n in new_set if n not in old_set), tuple(s for s in new_seeds if s not in old_seeds))
    if added and new.get("search", {}).get("search") != "grid":
        problems.append("settings or seeds were added to a search study (only a grid study can grow)")
    return added, problems


def read_design(study_dir: Path) -> dict[str, Any] | None:
    path = Path(study_dir) / DESIGN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_design(study_dir: Path, design: Mapping[str, Any], parts: Sequence[Mapping[str, Any]]) -> None:
    path = Path(study_dir) / DESIGN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**design, "parts": list(parts)}, indent=1, sort_keys=True))
    os.replace(tmp, path)


def check_design(study_dir: Path, design: Mapping[str, Any], study: str) -> tuple[DesignChange, list[dict[str, Any]]]:
    """On ``--resume``: (what to add, the recorded experiment parts). Raises :class:`DesignChangedError`
    when the design changed in a way that cannot be resumed."""
    old = read_design(study_dir)
    if old is None:  # a study recorded before design records: nothing to compare with
        return DesignChange(), []
    added, problems = compare_designs(old, design)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise DesignChangedError(f"--resume of study {study!r} with another design: {shown}. Only settings or seeds "
                                 "can be added; start it again with --overwrite or give the new design another "
                                 "--results directory")
    return added, list(old.get("parts", []))


# -- zoo entries ----------------------------------------------------------------------------------
def verify_zoo_entry(model_path: Path) -> str | None:
    """None if ``model_path`` (a zoo ``model.pt``) reads as a segdistill model file
    (:func:`segdistill.checkpoints.read_model_file`, what trials load it with), else why not."""
    try:
        if model_path.stat().st_size == 0:
            return "the file is empty"
        file = read_model_file(model_path)
    except FileNotFoundError:
        return "the file is missing"
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle errors, foreign files
        return f"{type(exc).__name__}: {exc}"
    if file.format != "segdistill-model":
        return f"not a segdistill model file (it reads as a {file.format} file)"
    return None


def set_aside(path: Path) -> Path:
    """Rename an unusable file to ``<name>.corrupt-<time>`` (kept for inspection); returns the new path."""
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, dest)
    return dest
