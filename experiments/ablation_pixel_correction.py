"""HWD with the paper's pixel-count correction CD'_c = CD_c / (N_c + 1) ("n", Eq. 5) versus the
released code's recipe without it ("none"), at two mu values; CWD as reference.

The paper leaves open whether its numbers used the correction (docs/REFERENCE.md: the published command
runs without it). This ablation answers that on the synthetic benchmark or a real dataset.

    python experiments/ablation_pixel_correction.py --preset smoke|demo|paper [--seeds N]
"""

from __future__ import annotations

from segdistill.catalog import PIXEL_CORRECTION
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


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    preset = preset_from_args(args)
    mu0 = preset.params("hwd").mu
    mus = pick(preset, tuple(sorted({mu0, 1.0})), (mu0,))
    variants = [{"distill.method": "hwd", "distill.pixel_correction": pc, "distill.mu": m,
                 "tag.group": PIXEL_CORRECTION, "tag.setting": f"{pc} mu={m:g}"}
                for pc in ("n", "none") for m in mus]
    spec = ablation_spec(__file__, preset, variants)
    df = run(spec, args)
    report(df, args, spec, by=["group", "setting"], reference=CWD_REF_KEY,
           title="HWD pixel correction: paper 'n' vs released 'none'")
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
