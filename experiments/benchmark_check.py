"""Issues 9 and 16: does the preset's benchmark give distillation questions measurable answers, and on
every instance of it? Three checks, each per data instance (``data.seed``; every instance has its own
teacher) and pooled over the instances:

(1) the teacher beats the CE-only baseline student by >= 0.10 mIoU; (2) the baseline's seed std is
<= 0.01, under each candidate evaluation protocol (``PROTOCOLS``: final mIoU, mean of the last
evaluations, best evaluation); the metric every other check and the experiment scripts report is
``presets.REPORTED_METRIC``, fixed from these numbers before methods were compared (benchmarks/RESULTS.md),
and the check prints which protocol its own numbers would pick; (3) with alpha and tau chosen by the
platform's own Optuna sweep on the first instance (best reported mIoU in the sweep's Parquet, on a seed
outside the evaluation seeds) and reused on every instance, CWD or HWD beats the baseline by more
than 2 standard errors over >= 5 seeds per arm. Also the cost: CPU-minutes per arm and instance, and
the wall time. Studies ``benchmark_check-<preset>-{baseline,sweep_cwd,sweep_hwd,distilled}``, one Ray session.

    python experiments/benchmark_check.py --preset smoke|demo [--seeds N] [--instances N] [--trials N]
        [--methods cwd,hwd] [--resume]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from segdistill.catalog import BENCHMARK, LAST_EVALS, SEARCH, experiment_tags
from segdistill.results import read_trials
from segdistill.study import StudySpec
from segdistill.study.cli_args import (
    parser,
    preset_from_args,
    run,
    script_main,
    study_name,
)
from segdistill.study.presets import PAPER_MU, REPORTED_METRIC, Preset
from segdistill.summary import difference_se, welch_t_test

METRIC = REPORTED_METRIC  # what checks (1) and (3) use: mean val mIoU of the last evaluations
PROTOCOLS = {  # candidate evaluation protocols (trials columns), in the order of preference (simplest first)
    "final_miou": "mIoU of the final model on the validation split (data.val_images images)",
    "last_evals_miou": f"mean val mIoU of the last {LAST_EVALS} evaluations (catalog.last_evals_miou)",
    "best_miou": "the best evaluation's mIoU (selects on the validation split)",
}
SEEDS = {"smoke": 2, "demo": 5, "paper": 5}  # evaluation seeds 0..N-1 per arm and instance (--seeds)
INSTANCES = {"smoke": 2, "demo": 3, "paper": 1}  # data.seed 0..N-1, each its own teacher (--instances)
TRIALS = {"smoke": 2, "demo": 8, "paper": 8}  # Optuna trials per method (--trials)
SWEEP_SEED = 1000  # the sweep's one seed, outside 0..N-1: the comparison is not run on the seed it was picked on
MIN_SEEDS, MIN_GAP, MAX_STD, N_SE = 5, 0.10, 0.01, 2.0  # issue 9's thresholds
EXPERIMENT = "benchmark_check"
MIN_INSTANCES = 3  # issue 16: the pooled verdicts need at least 3 data instances


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
    return StudySpec(name=name, base=preset.base, variants=preset.variants(variants), seeds=tuple(seeds), teacher=preset.teacher,
                     shape=preset.shape, resources=preset.resources, cohort_size=1,
                     tags=experiment_tags(EXPERIMENT, preset.name, group), **kw)


def completed(results: str, name: str) -> pd.DataFrame:
    t = read_trials(results, name)
    return t[t["status"] == "completed"] if not t.empty else t


def best_of_sweep(results: str, name: str) -> dict:
    """The completed sweep trial with the highest reported metric (METRIC), read from the study's Parquet."""
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


def _values(rows: pd.DataFrame, metric: str = METRIC) -> np.ndarray:
    if rows.empty or metric not in rows:
        return np.zeros(0)
    return pd.to_numeric(rows[metric], errors="coerce").dropna().to_numpy(np.float64)


def _std(x: np.ndarray) -> float | None:
    return _num(float(x.std(ddof=1))) if len(x) > 1 else None


def pooled_std(stds: list[float | None], ns: list[int]) -> float | None:
    """The within-instance seed std pooled over instances: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))."""
    pairs = [(s, n) for s, n in zip(stds, ns) if s is not None and n > 1]
    dof = sum(n - 1 for _, n in pairs)
    return _num(math.sqrt(sum((n - 1) * s * s for s, n in pairs) / dof)) if dof else None


def effect(x: np.ndarray, base: np.ndarray) -> dict:
    diff, se = difference_se(x, base)
    p = welch_t_test(x, base)[2]
    beats = bool(math.isfinite(se) and diff > N_SE * se)
    enough = len(x) >= MIN_SEEDS and len(base) >= MIN_SEEDS
    return {"diff": _num(diff), "se": _num(se), "n_se": _num(diff / se) if se and math.isfinite(se) else None,
            "welch_p": _num(p), "beats_2se": beats, "pass": beats and enough, "n": len(x), "n_ref": len(base)}


def instance_checks(arms: dict[str, pd.DataFrame], methods_: list[str]) -> dict:
    """The three checks on one data instance's arms (rows already with every protocol's column)."""
    base = _values(arms["baseline"])
    teacher = _values(arms["teacher"])
    gap = float(teacher.mean() - base.mean()) if len(teacher) and len(base) else math.nan
    stds = {p: _std(_values(arms["baseline"], p)) for p in PROTOCOLS}
    return {"teacher": _num(float(teacher.mean())) if len(teacher) else None,
            "baseline_mean": _num(float(base.mean())) if len(base) else None, "baseline_n": len(base),
            "teacher_gap": {"value": _num(gap), "pass": bool(gap >= MIN_GAP)},
            "baseline_std": {"value": stds[METRIC], "pass": stds[METRIC] is not None and stds[METRIC] <= MAX_STD,
                             "by_protocol": stds},
            "distillation": {m: effect(_values(arms[m]), base) for m in methods_}}


def choose_protocol(by_protocol: dict[str, dict]) -> str | None:
    """The first protocol (in ``PROTOCOLS`` order, simplest first) whose baseline seed std is <= MAX_STD
    on every instance: a choice from the noise alone, never from any method's effect."""
    for p in PROTOCOLS:
        if by_protocol[p]["pass"]:
            return p
    return None


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def checks(results: str, names: dict[str, str], chosen: dict[str, dict], n_seeds: int,
           instances: list[int]) -> dict:
    """Print the three checks per instance and pooled, the protocols' seed stds and the cost, from
    Parquet; return every number (for the JSON line). Means and stds use completed trials; the cost
    counts every recorded trial (failed ones too)."""
    everything = pd.concat([read_trials(results, n) for n in names.values()], ignore_index=True)
    done = everything[everything["status"] == "completed"]
    methods_ = list(chosen)
    seed_of = lambda t: pd.to_numeric(t["data.seed"], errors="coerce")  # noqa: E731
    print(f"\n== benchmark check: {METRIC} (presets.REPORTED_METRIC), {len(instances)} data instances "
          f"(data.seed {', '.join(map(str, instances))}) x {n_seeds} seeds per arm; "
          f"CPU-min = wall_time_s x run.threads / 60 ==")
    print(f"{'data.seed':>9} {'arm':<10} {'n':>3} {'mean':>8} {'std':>8} {'CPU-min':>8}")
    per, arms_out, total = {}, {}, 0.0
    for inst in instances:
        arms = split_arms(done[seed_of(done) == inst], names, methods_)
        cost = {a: cpu_minutes(r) for a, r in split_arms(everything[seed_of(everything) == inst], names,
                                                         methods_).items()}
        arms_out[str(inst)] = {}
        for arm, rows in arms.items():
            x = _values(rows)
            if not len(x) and not cost[arm]:
                continue  # e.g. the sweeps, which run on the first instance only
            st = {"n": len(x), "mean": _num(float(x.mean())) if len(x) else None, "std": _std(x),
                  "cpu_min": _num(cost[arm])}
            arms_out[str(inst)][arm] = st
            total += st["cpu_min"] or 0.0
            print(f"{inst:>9} {arm:<10} {st['n']:>3} {_fmt(st['mean']):>8} {_fmt(st['std']):>8} "
                  f"{st['cpu_min']:>8.2f}")
        per[str(inst)] = instance_checks(arms, methods_)
    print(f"{'':>9} {'total':<10} {'':>3} {'':>8} {'':>8} {total:>8.2f}   (sweep_*: n = Optuna trials on one seed)")
    other = everything[everything["status"] != "completed"].drop_duplicates("trial_id")
    if len(other):
        print(f"not completed (left out): {other['status'].value_counts().to_dict()} in {sorted(set(other['study']))}")
    for m, c in chosen.items():
        print(f"chosen {m}: alpha={c['alpha']:.4g} tau={c['tau']:.4g} (best {METRIC} {c['sweep_miou']:.4f} of "
              f"{c['sweep_trials']} sweep trials, seed {SWEEP_SEED}, data.seed {instances[0]}; used on every instance)")

    print("\nper instance:")
    for inst, c in per.items():
        effects = "; ".join(f"{m} {_fmt(e['diff'], '+.4f')} ({_fmt(e['n_se'], '.1f')} SE, p {_fmt(e['welch_p'], '.2g')})"
                            for m, e in c["distillation"].items())
        print(f"  data.seed={inst}: teacher {_fmt(c['teacher'])}, gap {_fmt(c['teacher_gap']['value'], '+.4f')} "
              f"[{_ok(c['teacher_gap']['pass'])}]; baseline std {_fmt(c['baseline_std']['value'])} "
              f"[{_ok(c['baseline_std']['pass'])}]; vs baseline: {effects}")

    # the candidate protocols: baseline seed std on each instance, pooled, and whether all pass
    by_protocol = {}
    print(f"\nbaseline seed std by evaluation protocol (pooled = sqrt of the instances' mean variance, "
          f"by degrees of freedom; needs <= {MAX_STD} on every instance):")
    print(f"{'protocol':<16} " + " ".join(f"{'data.seed=' + i:>12}" for i in per) + f" {'pooled':>8} {'max':>8}")
    ns = [per[i]["baseline_n"] for i in per]
    for p in PROTOCOLS:
        stds = [per[i]["baseline_std"]["by_protocol"][p] for i in per]
        worst = max((s for s in stds if s is not None), default=None)
        ok = bool(len(stds) and all(s is not None and s <= MAX_STD for s in stds))
        by_protocol[p] = {"std": dict(zip(per, stds)), "pooled": pooled_std(stds, ns), "max": worst, "pass": ok}
        print(f"{p:<16} " + " ".join(f"{_fmt(s):>12}" for s in stds) +
              f" {_fmt(by_protocol[p]['pooled']):>8} {_fmt(worst):>8}  {_ok(ok)}")
    pick = choose_protocol(by_protocol)
    agree = "the reported metric" if pick == METRIC else (f"NOT the reported {METRIC}: revisit "
                                                        "presets.REPORTED_METRIC" if pick else "none passes")
    print(f"protocol these numbers pick (first in {list(PROTOCOLS)} that passes everywhere): {pick or 'none'} "
          f"({agree})")

    # pooled verdicts: every instance must pass; the pooled numbers are printed with them
    k = len(per)
    few = "" if k >= MIN_INSTANCES else f" (needs >= {MIN_INSTANCES} data instances; ran {k})"
    gaps = [c["teacher_gap"]["value"] for c in per.values()]
    c1 = bool(k and all(c["teacher_gap"]["pass"] for c in per.values())) and k >= MIN_INSTANCES
    finite = [g for g in gaps if g is not None]
    print(f"\n(1) teacher - baseline: mean over instances {_fmt(float(np.mean(finite)) if finite else None, '+.4f')}, "
          f"min {_fmt(min((_nan(g) for g in gaps), default=math.nan), '+.4f')} (needs >= {MIN_GAP} on every "
          f"instance){few}: {_ok(c1)}")
    c2 = by_protocol[METRIC]["pass"] and k >= MIN_INSTANCES
    print(f"(2) baseline seed std ({METRIC}): pooled {_fmt(by_protocol[METRIC]['pooled'])}, max "
          f"{_fmt(by_protocol[METRIC]['max'])} (needs <= {MAX_STD} on every instance){few}: {_ok(c2)}")
    pooled_effects = {}
    for m in methods_:
        es = [c["distillation"][m] for c in per.values()]
        diffs = [e["diff"] for e in es if e["diff"] is not None]
        ses = [e["se"] for e in es if e["se"] is not None]
        d = float(np.mean(diffs)) if diffs else math.nan
        se = math.sqrt(sum(s * s for s in ses)) / len(ses) if ses and len(ses) == len(es) else math.nan
        every = bool(es and all(e["pass"] for e in es))
        pooled_effects[m] = {"diff": _num(d), "se": _num(se), "every_instance_pass": every,
                             "instances_passing": sum(e["pass"] for e in es)}
        print(f"(3) {m} - baseline: mean over instances {_fmt(d, '+.4f')}, SE {_fmt(se)}; > {N_SE:g} SE over >= "
              f"{MIN_SEEDS} seeds on {pooled_effects[m]['instances_passing']}/{k} instances")
    c3 = any(v["every_instance_pass"] for v in pooled_effects.values()) and k >= MIN_INSTANCES
    note = "" if n_seeds >= MIN_SEEDS else f" (needs >= {MIN_SEEDS} seeds per arm; ran {n_seeds})"
    print(f"(3) a method beats the baseline by > {N_SE:g} SE over >= {MIN_SEEDS} seeds on every instance{few}: "
          f"{_ok(c3)}{note}")
    return {"metric": METRIC, "seeds": n_seeds, "instances": instances, "sweep_seed": SWEEP_SEED,
            "arms": arms_out, "chosen": chosen, "per_instance": per, "protocols": by_protocol,
            "protocol_pick": pick,
            "pooled": {"teacher_gap": {"values": gaps, "pass": c1},
                       "baseline_std": {"pooled": by_protocol[METRIC]["pooled"], "max": by_protocol[METRIC]["max"],
                                        "pass": c2},
                       "distillation": pooled_effects, "distillation_pass": c3},
            "cpu_min_total": _num(total), "studies": names}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="Optuna trials per method (smoke 2, demo 8)")
    p.add_argument("--instances", type=int, default=None,
                   help="data instances: data.seed 0..N-1, each with its own teacher (smoke 2, demo 3)")
    p.add_argument("--methods", default="cwd,hwd", help="distillation methods to sweep and test (of cwd, hwd)")
    p.add_argument("--report-only", action="store_true", help="train nothing: print the checks from the studies' "
                   "Parquet as they are (e.g. of an interrupted run; a method without a finished sweep is left out)")
    args = p.parse_args(argv)
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not wanted or set(wanted) - {"cwd", "hwd"}:
        p.error(f"--methods takes cwd and/or hwd, got {args.methods!r}")
    preset = preset_from_args(args)
    if args.seeds is None:
        preset = preset.replace(seeds=tuple(range(SEEDS[preset.name])))
    trials = args.trials or TRIALS[preset.name]
    instances = list(range(args.instances or INSTANCES[preset.name]))
    stem = study_name(__file__, preset)
    arms_of = {m: v for m, v in methods(preset).items() if m in wanted}
    names = {"baseline": f"{stem}-baseline", **{f"sweep_{m}": f"{stem}-sweep_{m}" for m in arms_of},
             "distilled": f"{stem}-distilled"}
    from segdistill.study.runtime import ray_session

    t0, walls = time.time(), {}
    if args.report_only:
        chosen = {}
        for m in arms_of:
            try:
                chosen[m] = best_of_sweep(args.results, names[f"sweep_{m}"])
            except (SystemExit, FileNotFoundError, KeyError):
                names.pop(f"sweep_{m}")
        out = checks(args.results, names, chosen, len(preset.seeds), instances)
        print(json.dumps({"benchmark_check": {**out, "preset": preset.name, "report_only": True}}, sort_keys=True))
        return 0

    def timed(key: str, spec: StudySpec) -> None:
        t = time.time()
        run(spec, args)
        walls[key] = round(time.time() - t, 1)

    with ray_session(args.address):  # one Ray for the four studies (run_study reuses it)
        timed("baseline", study(preset, names["baseline"],
                                [{"distill.method": "none", "data.seed": i, "tag.setting": f"baseline data.seed={i}"}
                                 for i in instances], preset.seeds, BENCHMARK))
        chosen = {}
        for m, v in arms_of.items():  # the sweeps run on the first instance only
            timed(f"sweep_{m}", study(preset, names[f"sweep_{m}"],
                                      [{**v, "data.seed": instances[0], "tag.setting": f"sweep_{m}"}], (SWEEP_SEED,),
                                      SEARCH, search="optuna", space=alpha_tau_space, num_samples=trials))
            chosen[m] = best_of_sweep(args.results, names[f"sweep_{m}"])
        arms = [{**v, "distill.alpha": chosen[m]["alpha"], "distill.tau": chosen[m]["tau"], "data.seed": i,
                 "tag.setting": f"{m} data.seed={i}"} for i in instances for m, v in arms_of.items()]
        timed("distilled", study(preset, names["distilled"], arms, preset.seeds, BENCHMARK))
    out = checks(args.results, names, chosen, len(preset.seeds), instances)
    wall = time.time() - t0
    out.update(preset=preset.name, trials_per_sweep=trials, wall_s=_num(wall), study_wall_s=walls)
    print(f"cost: wall time {wall / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in walls.items())}), "
          f"{out['cpu_min_total']:.1f} CPU-min in trials")
    print(f"results: {Path(args.results).resolve()} (studies {stem}-*)")
    print(f"figures: python -m analysis --results {args.results} --out reports")
    print(json.dumps({"benchmark_check": out}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
