"""Paper Fig. 2 and Table I: per-class IoU and TD/NTD of the baseline, CWD, HWD students and the
teacher. Students record per-class IoU, accuracy, pixel counts and TD/NTD (segdistill.results
``per_class``); the teacher's record is copied in from the zoo (role = teacher).

    python experiments/class_analysis.py --preset smoke|demo|paper [--seeds N]
"""

from __future__ import annotations

from pathlib import Path

from segdistill.catalog import CLASS_ANALYSIS, experiment_tags
from segdistill.study import StudySpec
from segdistill.study.cli_args import (
    parser,
    preset_from_args,
    report,
    run,
    script_main,
    study_name,
)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    preset = preset_from_args(args)
    variants = [{"distill.method": m, "tag.setting": m} for m in ("none", "cwd", "hwd")]
    # opt-in figure data: sampled per-pixel features (t-SNE, Fig. 5) and a few predictions (Fig. 4)
    base = preset.base.replace(**{"run.embedding_pixels": 256 if preset.subset else 2000,
                                  "run.sample_images": 2 if preset.subset else 4})
    spec = StudySpec(name=study_name(__file__, preset), base=base, variants=preset.variants(variants), seeds=preset.seeds,
                     teacher=preset.teacher, shape=preset.shape, resources=preset.resources,
                     tags=experiment_tags("class_analysis", preset.name, CLASS_ANALYSIS))
    df = run(spec, args)
    report(df, args, spec, by=["distill.method"], reference={"distill.method": "none"},
           title="baseline / CWD / HWD (per-class tables in per_class)")
    from segdistill.results import read_per_class

    pc = read_per_class(Path(args.results), spec.name)
    if not pc.empty:
        merged = pc.merge(df[["trial_id", "distill.method", "role"]], on="trial_id")
        merged["who"] = merged["role"].where(merged["role"] == "teacher", merged["distill.method"])
        table = merged.pivot_table(index="class_name", columns="who", values="iou", aggfunc="mean")
        print("\nper-class IoU (mean over seeds; rarest classes first):")
        order = merged.groupby("class_name")["pixels"].mean().sort_values().index
        print(table.reindex(order).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
