"""Regenerate every table and figure of the paper from a results tree.

    python -m analysis --results results --out reports
    python analysis/make_all.py --results results --out reports

Writes ``<out>/tables/*.{csv,md,tex}``, ``<out>/figures/*.{png,pdf}`` and ``<out>/index.md``
(what was written, what was skipped for lack of data). Each product skips cleanly, logging
"no data for X", when its inputs are absent; a product that crashes is logged and reported in
``Report.failed`` (the CLI then exits 1) without stopping the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: make `analysis` and `segdistill` importable
    _here = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_here), str(_here / "platform")]
    __package__ = "analysis"

from analysis import ablations, comparison, curves, embeddings, per_class, samples  # noqa: E402
from analysis.common import Report, Results, load, log  # noqa: E402


def products(embedding_method: str = "tsne") -> list[tuple[str, Callable[[Results, Report], None]]]:
    return [
        ("Fig. 3 smoothing function", lambda res, rep: ablations.fig3_smoothing(rep)),
        ("Tables II/III method comparison", comparison.table_methods),
        ("Fig. 2 per-class IoU", per_class.fig2_per_class_iou),
        ("Table I TD/NTD", per_class.table1_td_ntd),
        ("Fig. 6 beta ablation", ablations.fig6_beta),
        ("Fig. 7 mu ablation", ablations.fig7_mu),
        ("pixel-correction ablation", ablations.table_pixel_correction),
        ("Fig. 5 embeddings", lambda res, rep: embeddings.fig5_embeddings(res, rep, method=embedding_method)),
        ("Fig. 4 samples", samples.fig4_samples),
        ("training curves", curves.fig_curves),
    ]


def make_all(results: str | Path, out: str | Path, *, embedding_method: str = "tsne",
             statuses: Sequence[str] = ("completed",)) -> Report:
    """Run every product; raises ``FileNotFoundError`` if ``results`` does not exist."""
    res = load(results, statuses=statuses)
    report = Report(Path(out))
    report.out.mkdir(parents=True, exist_ok=True)
    if res.empty:
        log.warning("no data: no completed trials under %s; only data-free figures are produced", results)
    for name, fn in products(embedding_method):
        try:
            fn(res, report)
        except Exception as exc:  # noqa: BLE001 - one broken product must not hide the others
            log.error("%s failed: %s\n%s", name, exc, traceback.format_exc())
            report.failed.append(f"{name}: {type(exc).__name__}: {exc}")
    _write_index(report, results, len(res.trials))
    return report


def _write_index(report: Report, results: str | Path, n_trials: int) -> None:
    lines = [f"# Reports from `{results}`", "", f"{n_trials} trial(s) used.", "", "## Written", ""]
    lines += [f"- `{p.relative_to(report.out)}`" for p in report.written] or ["- (nothing)"]
    lines += ["", "## Skipped", ""] + ([f"- {s}" for s in report.skipped] or ["- (nothing)"])
    if report.failed:
        lines += ["", "## Failed", ""] + [f"- {s}" for s in report.failed]
    (report.out / "index.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results root (default: results)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--embeddings", choices=("tsne", "pca"), default="tsne",
                    help="2-D projection when no precomputed t-SNE columns exist")
    ap.add_argument("--status", action="append", default=None,
                    help="trial statuses to include (repeatable; default: completed)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = make_all(args.results, args.out, embedding_method=args.embeddings,
                          statuses=tuple(args.status or ("completed",)))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(report.written)} files to {report.out} ({len(report.skipped)} products skipped for lack of data; "
          f"see {report.out / 'index.md'})")
    for s in report.skipped:
        print(f"  {s}")
    if report.failed:
        print("FAILED: " + "; ".join(report.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
