"""Paper Tables II/III: the CE-only baseline and every registered method (KD, CWD, HWD, SKD, IFVD,
CIRKD, MGD, DIST) for each student architecture (DeepLab-R18, DeepLab-MBV2, PSPNet-R18) on each
dataset, several seeds (the demo preset: at least 3), on one data pipeline and schedule. Each method
gets its reference recipe's weights (``presets.method_overrides``) and is tested against the CE-only
baseline of the same student and dataset. The smoke preset runs every method on one student.

    python experiments/compare_methods.py --preset smoke|demo|paper [--datasets a,b] [--methods m1,m2]
"""

from __future__ import annotations

from pathlib import Path

from segdistill.catalog import COMPARISON, experiment_tags
from segdistill.config import known_methods
from segdistill.study import StudySpec
from segdistill.study.cli_args import (
    parser,
    preset_from_args,
    report,
    run,
    script_main,
    study_name,
)
from segdistill.study.presets import (
    PAPER_MU,
    compare_methods_preset,
    method_overrides,
    pick,
)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(known_methods()), help="comma-separated; 'none' is the baseline")
    p.add_argument("--students", default=None, help="comma-separated student architectures (default: the preset's: "
                   "three families in the demo and paper presets)")
    p.add_argument("--datasets", default=None, help="comma-separated (paper preset: ade20k,cityscapes,cocostuff "
                   "under --data-root/<name>)")
    args = p.parse_args(argv)
    preset = compare_methods_preset(preset_from_args(args), seeds_given=args.seeds is not None)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(known_methods()))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(known_methods())}")
    datasets = args.datasets.split(",") if args.datasets else [preset.base.data.name]
    students = args.students.split(",") if args.students else pick(preset, preset.students, preset.students[:1])
    variants = []
    for ds in datasets:
        data = {"data.name": ds} if ds == preset.base.data.name else {
            "data.name": ds, "data.root": str(Path(args.data_root) / ds)}
        for arch in students:
            for m in methods:
                v = {**data, "model.arch": arch, "distill.method": m, "tag.setting": f"{arch}/{m}", **method_overrides(m)}
                if m == "hwd":
                    v["distill.mu"] = PAPER_MU.get(ds, 0.0)
                variants.append(v)
    spec = StudySpec(name=study_name(__file__, preset), base=preset.base, variants=preset.variants(variants), seeds=preset.seeds,
                     teacher=preset.teacher, shape=preset.shape, resources=preset.resources,
                     tags=experiment_tags("compare_methods", preset.name, COMPARISON))
    df = run(spec, args)
    report(df, args, spec, by=["data.name", "model.arch", "distill.method"], reference={"distill.method": "none"},
           title="methods vs the CE-only baseline (paper Tables II/III)")
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
