"""Train the zoo teachers a preset's studies need (once each; existing ones are reused).

The zoo is keyed by (architecture, dataset, recipe hash): ``<zoo>/<arch>/<dataset>/<hash>/model.pt``
(default zoo: ``<results>/_zoo``). Any study trains the teachers it misses itself; running this
first trains all of them in parallel (one Tune trial each) before the sweeps start.

    python experiments/train_teachers.py --preset smoke|demo|paper [--datasets a,b] [--archs a,b]
"""

from __future__ import annotations

import sys
from pathlib import Path

from segdistill.catalog import TEACHERS, experiment_tags
from segdistill.study import StudySpec, TeacherRecipe
from segdistill.study.cli_args import (
    parser,
    preset_from_args,
    report,
    script_main,
    study_name,
    view_args,
)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--datasets", default=None, help="comma-separated (default: the preset's dataset)")
    p.add_argument("--archs", default=None, help="comma-separated teacher architectures (default: the preset's)")
    args = p.parse_args(argv)
    preset = preset_from_args(args)
    datasets = args.datasets.split(",") if args.datasets else [preset.base.data.name]
    archs = args.archs.split(",") if args.archs else [preset.teacher.arch]
    # One distilling "student" variant per dataset names the teacher each needs; teachers_only
    # trains the missing ones and records them, and runs no student.
    variants = [{"distill.method": "kd", "data.name": ds,
                 **({} if ds == preset.base.data.name else {"data.root": str(Path(args.data_root) / ds)})}
                for ds in datasets]
    from segdistill.study.mlflow_log import MlflowUnavailableError
    from segdistill.study.runner import teachers_only

    for arch in archs:
        spec = StudySpec(name=f"{study_name(__file__, preset)}-{arch}", base=preset.base, variants=variants,
                         teacher=TeacherRecipe(arch, preset.teacher.overrides), shape=preset.shape,
                         resources=preset.resources, tags=experiment_tags("train_teachers", preset.name, TEACHERS))
        try:
            df = teachers_only(spec, results_root=args.results, address=args.address, zoo=args.zoo, **view_args(args))
        except MlflowUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report(df, args, spec, by=["model.arch", "data.name"], title=f"zoo teachers ({arch})")
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
