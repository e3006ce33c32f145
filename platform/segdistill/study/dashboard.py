"""``segdistill dashboard STUDY``: optuna-dashboard on a search study's ``optuna.journal``.

A study run with ``search="optuna"`` (``experiments/search_hwd.py``, ``benchmark_check.py``'s sweeps)
keeps its Optuna study in ``<results>/<study>/optuna.journal`` (Optuna's journal file storage, the
one ``--resume`` continues). This opens it in optuna-dashboard (history, parameter importances,
intermediate values, every trial with its parameters), also while the study is running::

    segdistill dashboard search_hwd-demo                 # <results>/search_hwd-demo, --results results
    segdistill dashboard results/search_hwd-demo --port 8081
    segdistill dashboard path/to/optuna.journal

No Ray import: it only reads the journal. Grid studies have no journal; asking for one says so and
lists the studies under the results root that have one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPTUNA_FILE = "optuna.journal"


class DashboardError(RuntimeError):
    """The study has no Optuna journal, or optuna-dashboard is not installed."""


def studies_with_journal(results: str | Path) -> list[str]:
    """Names of the studies under ``results`` that have an Optuna journal."""
    root = Path(results)
    return sorted(p.parent.name for p in root.glob(f"*/{OPTUNA_FILE}")) if root.is_dir() else []


def find_journal(study: str | Path, results: str | Path = "results") -> Path:
    """The journal of ``study``: a journal file, a study directory, or a study name under ``results``.
    Raises :class:`DashboardError` saying what was looked for and what exists."""
    given = Path(study).expanduser()
    if given.is_file():
        return given.resolve()
    candidates = [given] if given.is_dir() else []
    named = Path(results).expanduser() / str(study)
    if named.is_dir() and named.resolve() not in [c.resolve() for c in candidates]:
        candidates.append(named)
    for d in candidates:
        if (d / OPTUNA_FILE).is_file():
            return (d / OPTUNA_FILE).resolve()
    others = studies_with_journal(Path(results).expanduser())
    hint = (f"studies with a journal under {Path(results).expanduser().resolve()}: {', '.join(others)}" if others
            else f"no study under {Path(results).expanduser().resolve()} has one")
    if candidates:
        d = candidates[0].resolve()
        raise DashboardError(f"study {d.name!r} ({d}) has no {OPTUNA_FILE}: only Optuna searches (StudySpec"
                             f"(search='optuna'), e.g. experiments/search_hwd.py) write one, grid studies do not; "
                             f"{hint}")
    raise DashboardError(f"no study {str(study)!r}: neither the directory {given.resolve()} nor {named.resolve()} "
                         f"exists; {hint}")


def open_storage(journal: Path) -> Any:
    """Optuna's journal storage on ``journal`` (read by optuna-dashboard, written by the study)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal)))


def serve(journal: Path, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run optuna-dashboard on ``journal`` at ``http://host:port/dashboard`` until interrupted."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise DashboardError("the dashboard needs optuna-dashboard: pip install 'segdistill[dashboard]'") from None
    import optuna

    storage = open_storage(journal)
    summaries = optuna.get_all_study_summaries(storage)
    names = ", ".join(f"{s.study_name!r} ({s.n_trials} trials)" for s in summaries) or "no Optuna study yet"
    print(f"optuna-dashboard: {names} from {journal}\n  http://{host}:{port}/dashboard  (Ctrl-C stops it)",
          flush=True)
    run_server(storage, host=host, port=port)
