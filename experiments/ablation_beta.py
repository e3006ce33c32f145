"""Paper Fig. 6: HWD's smoothing beta vs the softmax-with-temperature alternative, CWD as reference.

HWD (mu = 0, paper weighting "smooth", Eq. 7) with beta in {0.01, 0.1, 0.3, 0.5, 0.7, 0.9}; the
alternative weighting w = C * softmax(w_n / tau') with tau' in {2, 3, 4, 5, 7, 10}; CWD (HWD with
w_c = 1, added by ablation_spec) as the reference every setting is tested against (Welch, over seeds).

    python experiments/ablation_beta.py --preset smoke|demo|paper [--seeds N] [--resume]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from segdistill.study.cli_args import CWD_REF_KEY, ablation_spec, parser, preset_from_args, report, run  # noqa: E402
from segdistill.study.cli_args import script_main  # noqa: E402
from segdistill.study.presets import pick  # noqa: E402

BETAS = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9)
TAU_PRIMES = (2.0, 3.0, 4.0, 5.0, 7.0, 10.0)


def variants(betas: tuple, tau_primes: tuple) -> list[dict]:
    hwd = {"distill.method": "hwd", "distill.mu": 0.0, "distill.weighting": "smooth"}
    out = [{**hwd, "distill.beta": b, "tag.group": "beta", "tag.setting": f"beta={b:g}"} for b in betas]
    out += [{**hwd, "distill.weighting": "softmax", "distill.tau_prime": t, "tag.group": "softmax",
             "tag.setting": f"tau'={t:g}"} for t in tau_primes]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    preset = preset_from_args(args)
    spec = ablation_spec(__file__, preset, variants(pick(preset, BETAS, (0.1, 0.9)), pick(preset, TAU_PRIMES, (4.0,))))
    df = run(spec, args)
    report(df, args, spec, by=["group", "setting"], reference=CWD_REF_KEY,
           title="HWD beta / softmax tau' vs CWD (paper Fig. 6)")
    return 0


if __name__ == "__main__":
    raise SystemExit(script_main(main))
