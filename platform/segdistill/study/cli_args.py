"""Command-line plumbing shared by ``experiments/*.py``: flags, running, the closing summary.

Every script takes ``--preset {smoke,demo,paper} --results DIR --data-root DIR --address HOST:PORT
--resume --seeds N`` (plus ``--overwrite``, ``--zoo``, ``--shape``, ``--workers``, ``--gpus``,
``--cpus``, ``--iterations``, ``--dataset``, ``--pretrained``, ``--teacher-checkpoint``, ``--teacher-arch``,
``--mlflow URI``, ``--progress``, ``--verbose``, ``--quiet``, ``--debug``), shows the study's live view while it
runs and ends by printing a summary table, where the results went and the analysis command that
turns them into figures.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .. import catalog
from ..cli import OneLineArgumentParser
from ..config import ConfigError
from ..data import DATASETS
from ..results import read_trials
from ..summary import contrast as welch_contrast
from ..summary import format_table, summarize
from .guards import DesignChangedError, StudyLockedError, ZooEntryError
from .interrupt import StudyInterrupted, stopped_after_s
from .presets import PRESETS, REAL_DATA_PRESETS, REPORTED_METRIC, Preset, get_preset
from .spec import StudySpec


def _number(kind: type, low: float, *, strict: bool = False, what: str = "") -> Callable[[str], Any]:
    """argparse ``type=``: a ``kind`` >= ``low`` (> ``low`` if ``strict``), refused in one line."""
    rule = f"{'an integer' if kind is int else 'a number'} {'>' if strict else '>='} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}{what}") from None
        if value < low or (strict and value == low) or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be {rule}{what}")
        return value

    parse.__name__ = rule  # argparse names the type in some messages
    return parse


def parser(description: str) -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="demo", help="smoke: CI plumbing check; demo: synthetic "
                   "benchmark in minutes; paper: the paper's recipe on a real dataset and GPUs")
    p.add_argument("--results", default="results", help="results root (Parquet tables, Ray state, runs)")
    p.add_argument("--data-root", default="", help="dataset directory (paper preset, real datasets)")
    p.add_argument("--dataset", default=None, help="dataset name (paper default: ade20k; else synthetic)")
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. 10.0.0.1:6379) instead of "
                   "starting local Ray; results/zoo/data paths must then be on shared storage")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--overwrite", action="store_true", help="delete this study's previous results first")
    p.add_argument("--seeds", type=_number(int, 1, what=" (--seeds N runs seeds 0 .. N-1)"), default=None, help="number of seeds (default: the preset's)")
    p.add_argument("--zoo", default=None, help="teacher zoo directory (default: <results>/_zoo)")
    p.add_argument("--shape", choices=("inline", "train"), default=None,
                   help="trial shape (default: the preset's; 'train' = Ray Train workers per trial)")
    p.add_argument("--workers", type=_number(int, 1), default=None, help="Ray Train workers per trial (implies --shape train if > 1)")
    p.add_argument("--gpus", type=_number(float, 0), default=None, help="GPUs per trial (inline) or per worker (train)")
    p.add_argument("--cpus", type=_number(float, 0), default=None, help="CPUs per trial (inline) or per worker (train)")
    p.add_argument("--iterations", type=_number(int, 1), default=None, help="override the students' iterations")
    p.add_argument("--pretrained", default=None, help="students' ImageNet backbone file (model.pretrained), or a "
                   "directory holding the reference's resnet18-imagenet.pth / resnet101-imagenet.pth / "
                   "mobilenetv2-imagenet.pth (one for every student architecture)")
    p.add_argument("--teacher-checkpoint", default=None, help="distil from this teacher file (a segdistill model.pt "
                   "or a reference-code checkpoint such as deeplabv3_resnet101_citys_best_model.pth) instead of "
                   "training one into the zoo")
    p.add_argument("--teacher-arch", default=None, help="the teacher's architecture (default: the preset's, "
                   "e.g. deeplabv3_r101)")
    p.add_argument("--mlflow", default=None, metavar="URI", help="log every configuration as an MLflow run "
                   "(the study is the experiment), e.g. http://127.0.0.1:5000; checked before anything trains")
    p.add_argument("--progress", choices=("auto", "live", "plain", "off"), default="auto",
                   help="the live view: auto = a live display on a terminal, plain lines otherwise")
    p.add_argument("--verbose", action="store_true", help="also Ray Tune's status tables and Ray's INFO logs")
    p.add_argument("--quiet", action="store_true", help="no live view (warnings, errors and the summary only)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (default: one line)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot check alone; raises ConfigError naming the flags."""
    if getattr(args, "cpus", None) == 0 and not getattr(args, "gpus", None):
        raise ConfigError("--cpus 0: a trial needs some CPU or GPU; give --cpus > 0 or --gpus > 0")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise ConfigError("--resume and --overwrite: give one (--resume continues the study, --overwrite deletes it)")
    if getattr(args, "preset", None) in REAL_DATA_PRESETS and not getattr(args, "data_root", ""):
        raise ConfigError(f"--preset {args.preset} needs --data-root DIR (the directory holding the dataset)")
    dataset = getattr(args, "dataset", None)
    if dataset and dataset not in DATASETS:
        near = difflib.get_close_matches(dataset, list(DATASETS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"--dataset {dataset!r}: unknown dataset; known: {', '.join(sorted(DATASETS))}{hint}")


def view_args(args: argparse.Namespace) -> dict[str, Any]:
    """``run_study`` / ``teachers_only`` keywords for the view, logging and MLflow flags."""
    return {"progress": "off" if args.quiet else args.progress, "verbose": 1 if args.verbose else 0,
            "mlflow": args.mlflow}


def preset_from_args(args: argparse.Namespace) -> Preset:
    check_args(args)
    try:
        return _preset_from_args(args)
    except ValueError as exc:  # ConfigError included: a preset that cannot take these flags
        raise ConfigError(str(exc)) from None


def _preset_from_args(args: argparse.Namespace) -> Preset:
    return get_preset(args.preset, data_root=args.data_root, dataset=args.dataset, seeds=args.seeds,
                      shape=args.shape, workers=args.workers, gpus=args.gpus, cpus=args.cpus,
                      iterations=args.iterations, pretrained=getattr(args, "pretrained", None),
                      teacher_checkpoint=getattr(args, "teacher_checkpoint", None),
                      teacher_arch=getattr(args, "teacher_arch", None))


CWD_REFERENCE = {"distill.method": "cwd", "tag.group": catalog.CWD_REF, "tag.setting": "cwd"}
"""The CWD variant the ablations test every setting against (``reference=`` of :func:`report`)."""
CWD_REF_KEY = {"group": catalog.CWD_REF, "setting": "cwd"}


def ablation_spec(script: str, preset: Preset, variants: Sequence[Mapping[str, Any]]) -> StudySpec:
    """A grid study over ``variants`` plus the CWD reference, with the preset's base, per-method
    parameters, seeds, teacher, trial shape and resources."""
    catalog.check_variant_groups(Path(script).stem, variants)
    return StudySpec(name=study_name(script, preset), base=preset.base, variants=preset.variants([*variants, CWD_REFERENCE]),
                     seeds=preset.seeds, teacher=preset.teacher, shape=preset.shape, resources=preset.resources,
                     tags=catalog.experiment_tags(Path(script).stem, preset.name))


def study_name(script: str, preset: Preset) -> str:
    """``ablation_beta-demo``: one results directory per script and preset."""
    return catalog.study_name(Path(script).stem, preset.name)


def run(spec: StudySpec, args: argparse.Namespace) -> pd.DataFrame:
    """run_study with the script's flags; returns the study's trials table. Errors are one line
    (``--debug``: the traceback); an interrupted study says how to resume and exits 130/143. Ray is
    imported here (with the runner): the scripts' ``--help`` and their specs need no Ray."""
    from .runner import run_study

    t0 = time.time()
    with user_errors(args, spec):
        df = run_study(spec, results_root=args.results, address=args.address, resume=args.resume,
                       overwrite=args.overwrite, zoo=args.zoo, **view_args(args))
    df.attrs["wall_time_s"] = time.time() - t0
    return df


def user_errors_types() -> tuple[type[BaseException], ...]:
    """The errors a user's input or machine causes (reported in one line, exit code 2); the modules
    that define the others import Ray, hence imported here."""
    from .mlflow_log import MlflowUnavailableError
    from .runner import DashboardMissingError, StudyExistsError
    from .runtime import RayAddressError

    return (ConfigError, StudyExistsError, MlflowUnavailableError, DashboardMissingError, RayAddressError,
            StudyLockedError, DesignChangedError, ZooEntryError)


def resume_command(argv: Sequence[str] | None = None) -> str:
    """The command line that resumes this script's study: its own, with --resume and without --overwrite."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    script = argv[0] if argv else "experiments/<script>.py"
    return shlex.join(["python", script, *args])


class user_errors:  # noqa: N801 - used as a context manager
    """Turn a study's user-facing errors into one line on stderr and ``SystemExit(2)`` (the traceback
    with ``--debug``); a SIGINT/SIGTERM into the interruption report, the resume command and
    ``SystemExit(130 / 143)``."""

    def __init__(self, args: argparse.Namespace | None = None, spec: StudySpec | None = None) -> None:
        self.debug = bool(getattr(args, "debug", False)) or "--debug" in sys.argv
        self.args, self.spec = args, spec

    def __enter__(self) -> "user_errors":
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, StudyInterrupted):
            self._interrupted(exc, stopped_after_s())
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, KeyboardInterrupt):
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None
        if self.debug or not isinstance(exc, user_errors_types()):
            return False
        text = str(exc).strip()
        prefix = "" if text.startswith("--") else "error: "
        print(f"{prefix}{text}", file=sys.stderr)
        raise SystemExit(2) from None

    def _interrupted(self, exc: Any, took: float) -> None:
        counts = ""
        if self.args is not None and self.spec is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    df = read_trials(Path(self.args.results).resolve(), self.spec.name)
                students = _students(df)
                if not students.empty and "status" in students:
                    c = students["status"].value_counts().to_dict()
                    counts = f"; {len(students)} of {self.spec.num_trials()} configurations recorded (" + \
                        ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) + ")"
            except Exception:  # noqa: BLE001 - the report must not hide the resume command
                counts = ""
        print(f"study interrupted by {exc.signame} (stopped in {took:.1f} s){counts}; unfinished trials are "
              f"recorded as interrupted and continue from their checkpoints with:\n  {resume_command()}",
              file=sys.stderr, flush=True)


def script_main(main: Callable[[], int]) -> int:
    """Run an experiment script's ``main`` with one-line errors (``--debug``: tracebacks)."""
    with user_errors():
        return main()


def _students(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.get("role", pd.Series("student", index=df.index)) != "teacher"] if not df.empty else df


def report(df: pd.DataFrame, args: argparse.Namespace, spec: StudySpec, *, by: Sequence[str],
           reference: Mapping[str, Any] | None = None, metric: str = REPORTED_METRIC, title: str = "",
           ci: float | None = 0.95, contrast: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
           claim: str = "", expect: str = "below") -> dict[str, Any] | None:
    """Print the summary table (mean +/- std over seeds, difference to ``reference`` with its Welch
    ``ci`` interval and test), the trial status counts, where the results are and how to make the
    figures. ``metric``: the preset-independent reported protocol (``presets.REPORTED_METRIC``).
    ``contrast=(x, ref)``: also print that planned contrast (:func:`report_contrast`, with ``claim`` /
    ``expect``) under the table, and return its numbers."""
    students = _students(df)
    by = [c for c in by if c in students.columns]
    print()
    print(f"== {title or spec.name}: {metric} (mean +/- std over seeds; 'verdict' tests against seed noise) ==")
    if students.empty:
        print("(no student trials finished)")
    else:
        ref = reference if reference and all(k in students.columns for k in reference) else None
        # means and tests over finished configurations only (an interrupted or failed row is no result)
        done = students[students["status"] != "interrupted"] if "status" in students else students
        if done.empty:
            print("(no student trial finished)")
        else:
            print(format_table(summarize(done, by=by, metric=metric, reference=ref, ci=ci if ref else None),
                               ci_label=f"{ci:.0%}" if ci else "95%"))
        counts = students["status"].value_counts().to_dict() if "status" in students else {}
        print(f"trials: {len(students)} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})")
    out = None
    if contrast is not None:
        out = report_contrast(df, *contrast, metric=metric, level=ci or 0.95, claim=claim, expect=expect)
    teachers = df[df["role"] == "teacher"] if "role" in df else df.iloc[0:0]
    for _, t in teachers.iterrows():
        print(f"teacher {t.get('model.arch')}: {metric} {t.get(metric, float('nan')):.4f}, "
              f"best mIoU {t.get('best_miou', float('nan')):.4f}")
    root = Path(args.results).resolve()
    wall = df.attrs.get("wall_time_s")
    if wall is not None:
        print(f"wall time: {wall:.1f} s")
    print(f"results: {root / spec.name} (Parquet tables: trials, per_class, curves)")
    print(f"figures: python -m analysis --results {args.results} --out reports")
    return out


def report_contrast(df: pd.DataFrame, x: Mapping[str, Any], ref: Mapping[str, Any], *, metric: str = REPORTED_METRIC,
                    level: float = 0.95, claim: str = "", expect: str = "below") -> dict[str, Any]:
    """Print one planned contrast: mean(metric | rows matching ``x``) - mean(metric | ``ref``) with its
    Welch ``level`` interval, and what it says about ``claim`` (which predicts the difference
    ``expect`` = "below" or "above" 0): reproduced / contradicted beyond seed noise, or not resolved
    (the interval includes 0). Returns the numbers (:func:`segdistill.summary.contrast`) plus ``outcome``."""
    students = _students(df)
    if "status" in students:  # an interrupted row is no result
        students = students[students["status"] != "interrupted"]
    name = lambda key: str(key["setting"]) if "setting" in key else " ".join(f"{k}={v}" for k, v in key.items())  # noqa: E731

    def values(key: Mapping[str, Any]) -> pd.Series:
        if students.empty or any(k not in students for k in key) or metric not in students:
            return pd.Series(dtype=float)
        mask = pd.Series(True, index=students.index)
        for k, v in key.items():
            mask &= students[k] == v
        return pd.to_numeric(students.loc[mask, metric], errors="coerce").dropna()

    c = welch_contrast(values(x), values(ref), level=level)
    if c["direction"] == "n/a":
        outcome = "not resolved: needs >= 2 seeds per side"
    elif c["direction"] == "includes 0":
        outcome = f"not resolved at these seeds: the {level:.0%} interval includes 0 ({claim} not reproduced)"
    elif c["direction"] == expect:
        outcome = f"resolved beyond seed noise: {claim} reproduced"
    else:
        outcome = f"resolved beyond seed noise in the other direction: {claim} contradicted"
    c["outcome"] = outcome
    lo, hi = c["ci_low"], c["ci_high"]
    ci_text = "n/a" if lo != lo else f"[{lo:+.4f}, {hi:+.4f}]"
    print(f"contrast {name(x)} - {name(ref)} ({metric}): {c['diff']:+.4f}, {level:.0%} CI {ci_text} "
          f"(Welch, n = {c['n']} vs {c['n_ref']}, p = {c['p_value']:.3g}): {outcome}")
    return c
