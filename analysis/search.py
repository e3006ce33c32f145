"""The Optuna search over HWD's hyper-parameters (``experiments/search_hwd.py``).

``segdistill.study`` keeps the Optuna study in ``<results>/<study>/optuna.journal`` (Optuna's
journal storage; the Optuna study name is the study directory's name). The journal is copied to
``<out>/.cache`` (reading never touches the results tree) and loaded with ``optuna.load_study``;
the figures are Optuna's own: ``optuna.visualization.matplotlib.plot_optimization_history``,
``plot_param_importances`` (``optuna.importance.get_param_importances``, Optuna's default
evaluator) and ``plot_intermediate_values`` (what ASHA saw; ASHA-stopped trials reach Optuna as
COMPLETE with their last value). A table lists the trials, best first.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .common import COLUMN_W, Report, Results, percent_factor, plt, save_figure, save_table, slug

JOURNAL = "optuna.journal"


def journals(res: Results) -> list[tuple[str, Path]]:
    """(study directory, journal path) of every study with an Optuna journal."""
    if res.root is None or not Path(res.root).is_dir():
        return []
    return [(p.parent.name, p) for p in sorted(Path(res.root).glob(f"*/{JOURNAL}")) if p.is_file()]


def load_optuna(path: Path, cache: Path | None = None) -> list:
    """Every Optuna study in the journal at ``path`` (read from a copy under ``cache``)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        copy = cache / f"{path.parent.name}.{JOURNAL}"
        shutil.copyfile(path, copy)
        path = copy
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    return [optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)]


def trials_table(study) -> pd.DataFrame:
    """One row per Optuna trial: number, state, value, params; best value first."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "datetime_start", "duration"))
    df = df.rename(columns={c: c.removeprefix("params_") for c in df.columns})
    if "duration" in df:
        df["duration"] = pd.to_timedelta(df["duration"]).dt.total_seconds()
    return df.sort_values("value", ascending=study.direction.name == "MINIMIZE", na_position="last").reset_index(drop=True)


def _tidy(ax, title: str, size: tuple[float, float]) -> None:
    """Paper-column size and font sizes for an Optuna figure; our title replaces Optuna's."""
    for loc in ("left", "center", "right"):
        ax.set_title("", loc=loc)
    ax.set_title(title, fontsize=8)
    ax.xaxis.label.set_fontsize(8)
    ax.yaxis.label.set_fontsize(8)
    ax.tick_params(labelsize=7)
    ax.figure.set_size_inches(*size)
    ax.figure.tight_layout()


def fig_search(res: Results, report: Report) -> None:
    found = journals(res)
    made = False
    for study_dir, path in found:
        from optuna.visualization import matplotlib as ovm

        for study in load_optuna(path, report.cache):
            done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
            if not done:
                continue
            name = slug("search", study.study_name)
            f = percent_factor([t.value for t in done])
            paths: list[Path] = []
            with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna switches to the ggplot style
                warnings.simplefilter("ignore")  # Optuna's matplotlib backend is "experimental"
                ax = ovm.plot_optimization_history(study, target_name="val mIoU")
                _tidy(ax, f"Optimisation history, {study.study_name} ({len(done)} trials)", (COLUMN_W + 0.6, 2.5))
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False, fontsize=7)
                ax.figure.tight_layout()
                paths += save_figure(report, f"{name}_history", ax.figure)
                note = ""
                try:
                    ax = ovm.plot_param_importances(study)
                    _tidy(ax, f"Parameter importances, {study.study_name}", (COLUMN_W + 0.6, 0.4 * len(ax.patches) + 1.0))
                    for text in ax.texts:
                        text.set_fontsize(7)
                    legend = ax.get_legend()
                    if legend is not None:
                        legend.remove()
                    paths += save_figure(report, f"{name}_importance", ax.figure)
                except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                    plt.close("all")
                    note = f"no importances: {exc}"
                if any(t.intermediate_values for t in done):
                    ax = ovm.plot_intermediate_values(study)
                    _tidy(ax, f"Reported values per trial (what ASHA saw), {study.study_name}", (COLUMN_W + 0.6, 2.5))
                    ax.set_xlabel("report (evaluation) number")
                    ax.set_ylabel("val mIoU")
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                    legend = ax.get_legend()
                    if legend is not None:
                        legend.remove()
                    paths += save_figure(report, f"{name}_intermediate", ax.figure)
            table = trials_table(study)
            display = table.copy()
            display["value"] = [("" if pd.isna(v) else f"{v * f:.2f}") for v in display["value"]]
            display = display.rename(columns={"value": "val mIoU (%)" if f == 100 else "val mIoU"})
            display = display.drop(columns=[c for c in ("datetime_start",) if c in display])
            for c in display.columns:
                if display[c].dtype.kind == "f":
                    display[c] = display[c].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
            paths += save_table(report, f"{name}_trials", table, display,
                                caption=f"Optuna trials of {study.study_name}, best first")
            used = res.all_trials[res.all_trials["study"] == study_dir] if not res.all_trials.empty else None
            report.add("search", f"Optuna search ({study.study_name})", paths, used,
                       note=f"from {study_dir}/{JOURNAL}: {len(study.trials)} Optuna trials" + (f"; {note}" if note else ""))
            made = True
    if not made:
        why = "no <study>/optuna.journal under the results root" if not found else "the Optuna study has no completed trial"
        report.skip("search", "Optuna optimisation history and parameter importances", why)
