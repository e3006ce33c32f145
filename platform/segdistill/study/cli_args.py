"""Command-line plumbing shared by ``experiments/*.py``: flags, running, the closing summary.

Every script takes ``--preset {smoke,demo,paper} --results DIR --data-root DIR --address HOST:PORT
--resume --seeds N`` (plus ``--overwrite``, ``--zoo``, ``--shape``, ``--workers``, ``--gpus``,
``--cpus``, ``--iterations``, ``--dataset``, ``--pretrained``, ``--teacher-checkpoint``, ``--teacher-arch``,
``--mlflow URI``, ``--progress``, ``--verbose``, ``--quiet``), shows the study's live view while it
runs and ends by printing a summary table, where the results went and the analysis command that
turns them into figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .presets import PRESETS, REPORTED_METRIC, Preset, get_preset
from .spec import StudySpec


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="demo", help="smoke: CI plumbing check; demo: synthetic "
                   "benchmark in minutes; paper: the paper's recipe on a real dataset and GPUs")
    p.add_argument("--results", default="results", help="results root (Parquet tables, Ray state, runs)")
    p.add_argument("--data-root", default="", help="dataset directory (paper preset, real datasets)")
    p.add_argument("--dataset", default=None, help="dataset name (paper default: ade20k; else synthetic)")
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. 10.0.0.1:6379) instead of "
                   "starting local Ray; results/zoo/data paths must then be on shared storage")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--overwrite", action="store_true", help="delete this study's previous results first")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    p.add_argument("--zoo", default=None, help="teacher zoo directory (default: <results>/_zoo)")
    p.add_argument("--shape", choices=("inline", "train"), default=None,
                   help="trial shape (default: the preset's; 'train' = Ray Train workers per trial)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers per trial (implies --shape train if > 1)")
    p.add_argument("--gpus", type=float, default=None, help="GPUs per trial (inline) or per worker (train)")
    p.add_argument("--cpus", type=float, default=None, help="CPUs per trial (inline) or per worker (train)")
    p.add_argument("--iterations", type=int, default=None, help="override the students' iterations")
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
    return p


def view_args(args: argparse.Namespace) -> dict[str, Any]:
    """``run_study`` / ``teachers_only`` keywords for the view, logging and MLflow flags."""
    return {"progress": "off" if args.quiet else args.progress, "verbose": 1 if args.verbose else 0,
            "mlflow": args.mlflow}


def preset_from_args(args: argparse.Namespace) -> Preset:
    return get_preset(args.preset, data_root=args.data_root, dataset=args.dataset, seeds=args.seeds,
                      shape=args.shape, workers=args.workers, gpus=args.gpus, cpus=args.cpus,
                      iterations=args.iterations, pretrained=getattr(args, "pretrained", None),
                      teacher_checkpoint=getattr(args, "teacher_checkpoint", None),
                      teacher_arch=getattr(args, "teacher_arch", None))


CWD_REFERENCE = {"distill.method": "cwd", "tag.group": "cwd_ref", "tag.setting": "cwd"}
"""The CWD variant the ablations test every setting against (``reference=`` of :func:`report`)."""
CWD_REF_KEY = {"group": "cwd_ref", "setting": "cwd"}


def ablation_spec(script: str, preset: Preset, variants: Sequence[Mapping[str, Any]]) -> StudySpec:
    """A grid study over ``variants`` plus the CWD reference, with the preset's base, seeds, teacher,
    trial shape and resources."""
    return StudySpec(name=study_name(script, preset), base=preset.base, variants=[*variants, CWD_REFERENCE],
                     seeds=preset.seeds, teacher=preset.teacher, shape=preset.shape, resources=preset.resources,
                     tags={"preset": preset.name})


def study_name(script: str, preset: Preset) -> str:
    """``ablation_beta-demo``: one results directory per script and preset."""
    return f"{Path(script).stem}-{preset.name}"


def run(spec: StudySpec, args: argparse.Namespace) -> pd.DataFrame:
    """run_study with the script's flags; returns the study's trials table."""
    from .mlflow_log import MlflowUnavailableError
    from .preflight import PreflightError
    from .runner import StudyExistsError, run_study

    t0 = time.time()
    try:
        df = run_study(spec, results_root=args.results, address=args.address, resume=args.resume,
                       overwrite=args.overwrite, zoo=args.zoo, **view_args(args))
    except (StudyExistsError, PreflightError, MlflowUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    df.attrs["wall_time_s"] = time.time() - t0
    return df


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
    from ..summary import format_table, summarize

    students = _students(df)
    by = [c for c in by if c in students.columns]
    print()
    print(f"== {title or spec.name}: {metric} (mean +/- std over seeds; 'verdict' tests against seed noise) ==")
    if students.empty:
        print("(no student trials finished)")
    else:
        ref = reference if reference and all(k in students.columns for k in reference) else None
        print(format_table(summarize(students, by=by, metric=metric, reference=ref, ci=ci if ref else None),
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
    from ..summary import contrast

    students = _students(df)
    name = lambda key: str(key["setting"]) if "setting" in key else " ".join(f"{k}={v}" for k, v in key.items())  # noqa: E731

    def values(key: Mapping[str, Any]) -> pd.Series:
        if students.empty or any(k not in students for k in key) or metric not in students:
            return pd.Series(dtype=float)
        mask = pd.Series(True, index=students.index)
        for k, v in key.items():
            mask &= students[k] == v
        return pd.to_numeric(students.loc[mask, metric], errors="coerce").dropna()

    c = contrast(values(x), values(ref), level=level)
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
