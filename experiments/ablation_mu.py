"""Paper Fig. 7: HWD's mean mu of the normalised weights (Eq. 6), beta = 0.1, CWD as reference.

mu in {-2, -1, -0.5, -0.25, -0.1, 0, 0.1, 0.25, 0.5, 1, 2}; every setting is tested against CWD
(w_c = 1) over seeds.

    python experiments/ablation_mu.py --preset smoke|demo|paper [--seeds N] [--resume]
"""

from __future__ import annotations

from segdistill.catalog import MU
from segdistill.study.cli_args import (
    CWD_REF_KEY,
    ablation_spec,
    parser,
    preset_from_args,
    report,
    run,
    script_main,
)
from segdistill.study.presets import pick

MUS = (-2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    preset = preset_from_args(args)
    hwd = {"distill.method": "hwd", "distill.beta": 0.1, "distill.weighting": "smooth", "tag.group": MU}
    variants = [{**hwd, "distill.mu": m, "tag.setting": f"mu={m:g}"} for m in pick(preset, MUS, (-1.0, 1.0))]
    spec = ablation_spec(__file__, preset, variants)
    df = run(spec, args)
    report(df, args, spec, by=["group", "setting"], reference=CWD_REF_KEY,
           title="HWD mu vs CWD (paper Fig. 7)")
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
