"""Optuna TPE (seeded, multivariate, grouped) + ASHA over HWD's (mu, beta / tau', alpha) for one
teacher-student pair. The Optuna study is stored in ``<results>/<study>/optuna.journal`` and
continues with ``--resume``.

    python experiments/search_hwd.py --preset smoke|demo|paper [--samples N] [--resume]
"""

from __future__ import annotations

from segdistill.catalog import SEARCH, experiment_tags
from segdistill.study import StudySpec
from segdistill.study.cli_args import (
    parser,
    preset_from_args,
    report,
    run,
    script_main,
    study_name,
)


def hwd_space(trial) -> dict:
    """Define-by-run space (module level so it pickles); tau' only exists for softmax weighting."""
    trial.suggest_float("distill.mu", -2.0, 2.0)
    trial.suggest_float("distill.alpha", 0.1, 5.0, log=True)
    weighting = trial.suggest_categorical("distill.weighting", ["smooth", "softmax"])
    if weighting == "smooth":
        trial.suggest_float("distill.beta", 0.01, 0.9, log=True)
    else:
        trial.suggest_float("distill.tau_prime", 1.0, 10.0, log=True)
    return {"distill.method": "hwd"}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=None, help="Optuna trials (smoke 4, demo 24, paper 32)")
    args = p.parse_args(argv)
    preset = preset_from_args(args)
    samples = args.samples or {"smoke": 4, "demo": 24, "paper": 32}[preset.name]
    spec = StudySpec(name=study_name(__file__, preset), base=preset.base, variants=preset.variants([{"distill.method": "hwd"}]),
                     seeds=preset.seeds[:1], search="optuna", space=hwd_space, num_samples=samples,
                     scheduler="asha", teacher=preset.teacher, shape=preset.shape, resources=preset.resources,
                     tags=experiment_tags("search_hwd", preset.name, SEARCH))
    df = run(spec, args)
    report(df, args, spec, by=["status"], title="Optuna TPE + ASHA over HWD")
    students = df[df["role"] != "teacher"].sort_values("best_miou", ascending=False)
    cols = [c for c in ("trial_id", "status", "iterations_done", "best_miou", "distill.mu", "distill.alpha",
                        "distill.weighting", "distill.beta", "distill.tau_prime") if c in students]
    print("\nbest trials (iterations_done shows where ASHA stopped a trial):")
    print(students[cols].head(10).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
