"""Issue 9: does the preset's benchmark give distillation questions measurable answers? Three checks.

(1) the teacher beats the CE-only baseline student by >= 0.10 mIoU; (2) the baseline's seed std of
final mIoU is <= 0.01; (3) with alpha and tau chosen by the platform's own Optuna sweep (best final
mIoU in the sweep's Parquet, on a seed outside the evaluation seeds), CWD or HWD beats the baseline
by more than 2 standard errors over >= 5 seeds per arm. Also the cost: CPU-minutes per arm.
Studies ``benchmark_check-<preset>-{baseline,sweep_cwd,sweep_hwd,distilled}``, one Ray session.

    python experiments/benchmark_check.py --preset smoke|demo [--seeds N] [--trials N] [--resume]
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import pandas as pd  # noqa: E402

from segdistill.results import read_trials  # noqa: E402
from segdistill.study import StudySpec  # noqa: E402
from segdistill.study.cli_args import parser, preset_from_args, run, study_name  # noqa: E402
from segdistill.study.cli_args import script_main  # noqa: E402
from segdistill.study.presets import PAPER_MU, Preset  # noqa: E402
from segdistill.summary import difference_se, welch_t_test  # noqa: E402

METRIC = "final_miou"  # mIoU at the end of the schedule (not the best evaluation: no selection on val)
SEEDS = {"smoke": 2, "demo": 5, "paper": 5}  # evaluation seeds 0..N-1 per arm (--seeds)
TRIALS = {"smoke": 2, "demo": 8, "paper": 8}  # Optuna trials per method (--trials)
SWEEP_SEED = 1000  # the sweep's one seed, outside 0..N-1: the comparison is not run on the seed it was picked on
MIN_SEEDS, MIN_GAP, MAX_STD, N_SE = 5, 0.10, 0.01, 2.0  # issue 9's thresholds


def alpha_tau_space(trial) -> None:
    """The same define-by-run space for CWD and HWD (module level so it pickles)."""
    trial.suggest_float("distill.alpha", 0.1, 10.0, log=True)
    trial.suggest_float("distill.tau", 1.0, 8.0)


def methods(preset: Preset) -> dict[str, dict]:
    """CWD and HWD (mu of the dataset, paper weighting, N_c correction: the config defaults)."""
    return {"cwd": {"distill.method": "cwd"},
            "hwd": {"distill.method": "hwd", "distill.mu": PAPER_MU.get(preset.base.data.name, 0.0)}}


def study(preset: Preset, name: str, variants: list[dict], seeds, group: str, **kw) -> StudySpec:
    # cohort_size=1: one student per trial, so each row's wall_time_s is that student's own cost
    return StudySpec(name=name, base=preset.base, variants=variants, seeds=tuple(seeds), teacher=preset.teacher,
                     shape=preset.shape, resources=preset.resources, cohort_size=1,
                     tags={"preset": preset.name, "group": group}, **kw)


def completed(results: str, name: str) -> pd.DataFrame:
    t = read_trials(results, name)
    return t[t["status"] == "completed"] if not t.empty else t


def best_of_sweep(results: str, name: str) -> dict:
    """The completed sweep trial with the highest final mIoU, read from the study's Parquet."""
    t = completed(results, name)
    t = t[t["role"] != "teacher"].sort_values([METRIC, "trial_id"], ascending=[False, True]) if len(t) else t
    if t.empty:
        raise SystemExit(f"error: sweep {name} has no completed trial to choose alpha/tau from")
    r = t.iloc[0]
    return {"alpha": float(r["distill.alpha"]), "tau": float(r["distill.tau"]), "sweep_miou": float(r[METRIC]),
            "sweep_trials": len(t), "trial_id": str(r["trial_id"])}


def cpu_minutes(rows: pd.DataFrame) -> float:
    """Sum over rows of wall_time_s x run.threads (0 = library default, counted as 1), in minutes."""
    threads = pd.to_numeric(rows["run.threads"], errors="coerce").fillna(1).clip(lower=1)
    return float((pd.to_numeric(rows["wall_time_s"], errors="coerce") * threads).sum() / 60.0)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def split_arms(t: pd.DataFrame, names: dict[str, str], methods_: list[str]) -> dict[str, pd.DataFrame]:
    """The rows of each arm: teacher (one copy), baseline, each distilled method, each method's sweep."""
    teacher, students = t[t["role"] == "teacher"].drop_duplicates("trial_id"), t[t["role"] != "teacher"]
    arms = {"teacher": teacher, "baseline": students[students["study"] == names["baseline"]]}
    for m in methods_:
        arms[m] = students[(students["study"] == names["distilled"]) & (students["distill.method"] == m)]
    return {**arms, **{f"sweep_{m}": students[students["study"] == names[f"sweep_{m}"]] for m in methods_}}


def checks(results: str, names: dict[str, str], chosen: dict[str, dict], n_seeds: int) -> dict:
    """Print the three checks and the cost from Parquet; return every number (for the JSON line).
    Means and stds use completed trials; the cost counts every recorded trial (failed ones too)."""
    everything = pd.concat([read_trials(results, n) for n in names.values()], ignore_index=True)
    arms = split_arms(everything[everything["status"] == "completed"], names, list(chosen))
    cost = {arm: cpu_minutes(rows) for arm, rows in split_arms(everything, names, list(chosen)).items()}
    stats = {}
    print(f"\n== benchmark check: {METRIC}, {n_seeds} seeds per arm; CPU-min = wall_time_s x run.threads / 60 ==")
    print(f"{'arm':<10} {'n':>3} {'mean':>8} {'std':>8} {'CPU-min':>8}")
    for arm, rows in arms.items():
        x = pd.to_numeric(rows[METRIC], errors="coerce").dropna()
        stats[arm] = {"n": len(x), "mean": _num(x.mean()) if len(x) else None,
                      "std": _num(x.std(ddof=1)) if len(x) > 1 else None, "cpu_min": _num(cost[arm])}
        s = stats[arm]
        print(f"{arm:<10} {s['n']:>3} {_nan(s['mean']):>8.4f} {_nan(s['std']):>8.4f} {s['cpu_min']:>8.2f}")
    total = sum(s["cpu_min"] for s in stats.values())
    print(f"{'total':<10} {'':>3} {'':>8} {'':>8} {total:>8.2f}   (sweep_*: n = Optuna trials on one seed)")
    other = everything[everything["status"] != "completed"].drop_duplicates("trial_id")
    if len(other):
        print(f"not completed (left out): {other['status'].value_counts().to_dict()} in {sorted(set(other['study']))}")
    for m, c in chosen.items():
        print(f"chosen {m}: alpha={c['alpha']:.4g} tau={c['tau']:.4g} (best {METRIC} {c['sweep_miou']:.4f} of "
              f"{c['sweep_trials']} sweep trials, seed {SWEEP_SEED})")

    base = pd.to_numeric(arms["baseline"][METRIC], errors="coerce").dropna()
    gap = _nan(stats["teacher"]["mean"]) - _nan(stats["baseline"]["mean"])
    c1 = bool(gap >= MIN_GAP)
    print(f"(1) teacher - baseline mean = {gap:+.4f} (needs >= {MIN_GAP}): {_ok(c1)}")
    std = stats["baseline"]["std"]
    c2 = std is not None and std <= MAX_STD
    others = ", ".join(f"{m} {stats[m]['std']:.4f}" for m in chosen if stats[m]["std"] is not None)
    print(f"(2) baseline seed std = {std if std is not None else math.nan:.4f} (needs <= {MAX_STD}): {_ok(c2)}"
          f"  [other arms: {others or 'n/a'}]")
    per_method = {}
    for m in chosen:
        x = pd.to_numeric(arms[m][METRIC], errors="coerce").dropna()
        diff, se = difference_se(x, base)
        p = welch_t_test(x, base)[2]
        enough = len(x) >= MIN_SEEDS and len(base) >= MIN_SEEDS
        beats = bool(math.isfinite(se) and diff > N_SE * se)
        per_method[m] = {"diff": _num(diff), "se": _num(se), "welch_p": _num(p), "beats_2se": beats,
                         "pass": beats and enough}
        print(f"(3) {m} - baseline = {diff:+.4f}, SE {se:.4f}, {N_SE:g} SE = {N_SE * se:.4f}, Welch p = {p:.3g}: "
              f"> {N_SE:g} SE {'yes' if beats else 'no'} (n = {len(x)} vs {len(base)})")
    c3 = any(v["pass"] for v in per_method.values())
    note = "" if n_seeds >= MIN_SEEDS else f" (needs >= {MIN_SEEDS} seeds per arm; ran {n_seeds})"
    print(f"(3) a method beats the baseline by > {N_SE:g} SE over >= {MIN_SEEDS} seeds: {_ok(c3)}{note}")
    return {"metric": METRIC, "seeds": n_seeds, "sweep_seed": SWEEP_SEED, "arms": stats, "chosen": chosen,
            "checks": {"teacher_gap": {"value": _num(gap), "pass": c1}, "baseline_std": {"value": std, "pass": c2},
                       "distillation": per_method, "distillation_pass": c3},
            "cpu_min_total": _num(total), "studies": names}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="Optuna trials per method (smoke 2, demo 8)")
    args = p.parse_args(argv)
    preset = preset_from_args(args)
    if args.seeds is None:
        preset = preset.replace(seeds=tuple(range(SEEDS[preset.name])))
    trials = args.trials or TRIALS[preset.name]
    stem = study_name(__file__, preset)
    names = {"baseline": f"{stem}-baseline", "sweep_cwd": f"{stem}-sweep_cwd", "sweep_hwd": f"{stem}-sweep_hwd",
             "distilled": f"{stem}-distilled"}
    from segdistill.study.runtime import ray_session

    t0 = time.time()
    with ray_session(args.address):  # one Ray for the four studies (run_study reuses it)
        run(study(preset, names["baseline"], [{"distill.method": "none", "tag.setting": "baseline"}],
                  preset.seeds, "benchmark"), args)
        chosen = {}
        for m, v in methods(preset).items():
            run(study(preset, names[f"sweep_{m}"], [{**v, "tag.setting": f"sweep_{m}"}], (SWEEP_SEED,), "search",
                      search="optuna", space=alpha_tau_space, num_samples=trials), args)
            chosen[m] = best_of_sweep(args.results, names[f"sweep_{m}"])
        arms = [{**v, "distill.alpha": chosen[m]["alpha"], "distill.tau": chosen[m]["tau"], "tag.setting": m}
                for m, v in methods(preset).items()]
        run(study(preset, names["distilled"], arms, preset.seeds, "benchmark"), args)
    out = checks(args.results, names, chosen, len(preset.seeds))
    out.update(preset=preset.name, trials_per_sweep=trials, wall_s=_num(time.time() - t0))
    print(f"results: {Path(args.results).resolve()} (studies {stem}-*)")
    print(f"figures: python -m analysis --results {args.results} --out reports")
    print(json.dumps({"benchmark_check": out}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
