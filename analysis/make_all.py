"""Regenerate every table and figure of the paper from a results tree.

    python -m analysis --results results --out reports
    python analysis/make_all.py --results results --out reports

Writes ``<out>/tables/*.{csv,md,tex}``, ``<out>/figures/*.{png,pdf}``, ``<out>/index.md`` (every
artifact with the studies and trial counts it came from; every artifact that could not be made,
why, and the experiment command that makes its inputs) and ``<out>/index.html``, the same page for
a browser with every table and figure inline. Each product skips cleanly, logging
"no data for X", when its inputs are absent; a product that crashes is logged and reported in
``Report.failed`` (the CLI then exits 1) without stopping the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `analysis` and `segdistill` importable
    _here = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_here), str(_here / "platform")]
    __package__ = "analysis"

from analysis import ablations, comparison, curves, embeddings, per_class, samples, search  # noqa: E402
from analysis.common import Report, Results, load, log  # noqa: E402

DEMO = "--preset demo"
# artifact key -> the experiment command that produces its inputs
COMMANDS = {
    "table1": f"python experiments/class_analysis.py {DEMO}",
    "table2": f"python experiments/compare_methods.py {DEMO}",
    "table3": "python experiments/compare_methods.py --preset paper --datasets ade20k,cityscapes,cocostuff "
              "--data-root DATA (or --preset demo --datasets with two local datasets)",
    "fig_methods": f"python experiments/compare_methods.py {DEMO}",
    "fig2": f"python experiments/class_analysis.py {DEMO}",
    "fig3": "(analytic, needs no data)",
    "fig4": f"python experiments/class_analysis.py {DEMO}",
    "fig5": f"python experiments/class_analysis.py {DEMO}",
    "fig6": f"python experiments/ablation_beta.py {DEMO}",
    "fig7": f"python experiments/ablation_mu.py {DEMO}",
    "fig_hwd_minus_cwd": f"python experiments/class_analysis.py {DEMO}",
    "pixel_correction": f"python experiments/ablation_pixel_correction.py {DEMO}",
    "search": f"python experiments/search_hwd.py {DEMO}",
    "curves": f"any experiment script, e.g. python experiments/class_analysis.py {DEMO}",
}
Product = tuple[str, str, Callable[[Results, Report], None]]


def products(embedding_method: str = "tsne") -> list[Product]:
    """(key, title, function) of every artifact, in the order of the index."""
    return [
        ("table1", "Table I: TD/NTD per class (CWD student)", per_class.table1_td_ntd),
        ("table2", "Table II: methods x students, one dataset", comparison.table2),
        ("table3", "Table III: methods across datasets", comparison.table3),
        ("fig2", "Fig. 2: per-class IoU of baseline, CWD, HWD, teacher", per_class.fig2_per_class_iou),
        ("fig3", "Fig. 3: smoothing function (analytic)", lambda res, rep: ablations.fig3_smoothing(rep)),
        ("fig4", "Fig. 4: qualitative predictions", samples.fig4_samples),
        ("fig5", "Fig. 5: t-SNE of student pixel features",
         lambda res, rep: embeddings.fig5_embeddings(res, rep, method=embedding_method)),
        ("fig6", "Fig. 6: mIoU vs beta and tau', CWD dashed", ablations.fig6_beta),
        ("fig7", "Fig. 7: mIoU vs mu, CWD dashed", ablations.fig7_mu),
        ("fig_methods", "Method comparison with seed spread", comparison.fig_methods),
        ("fig_hwd_minus_cwd", "HWD minus CWD per class vs class frequency", per_class.fig_hwd_minus_cwd),
        ("pixel_correction", "N_c-correction ablation", ablations.table_pixel_correction),
        ("search", "Optuna history and parameter importances (search_hwd)", search.fig_search),
        ("curves", "Training curves per method", curves.fig_curves),
    ]


def make_all(results: str | Path, out: str | Path, *, embedding_method: str = "tsne",
             statuses: Sequence[str] = ("completed",), only: Sequence[str] | None = None,
             figure_formats: Sequence[str] = ("png", "pdf")) -> Report:
    """Run every product (or the keys in ``only``); raises ``FileNotFoundError`` if ``results``
    does not exist. A product without inputs is listed as missing; one that raises is logged and
    listed in ``Report.failed``; neither stops the others."""
    t0 = time.perf_counter()
    res = load(results, statuses=statuses)
    report = Report(Path(out), commands=dict(COMMANDS), figure_formats=tuple(figure_formats))
    report.out.mkdir(parents=True, exist_ok=True)
    if res.empty:
        log.warning("no data: no completed trials under %s; only data-free figures are produced", results)
    for key, title, fn in products(embedding_method):
        if only is not None and key not in only:
            continue
        t1 = time.perf_counter()
        try:
            fn(res, report)
            log.debug("%s: %.2f s", key, time.perf_counter() - t1)
        except Exception as exc:  # noqa: BLE001 - one broken product must not hide the others
            log.error("%s failed: %s\n%s", title, exc, traceback.format_exc())
            report.failed.append(f"{title}: {type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    write_index(report, res, results, seconds)
    write_html(report, res, results, seconds)
    return report


def write_index(report: Report, res: Results, results: str | Path, seconds: float) -> Path:
    """``<out>/index.md``: every artifact with its files and the studies / trial counts it came
    from; every artifact that could not be made, why, and the command that makes its inputs."""
    rel = lambda p: Path(p).relative_to(report.out).as_posix()  # noqa: E731
    lines = [f"# Reports from `{results}`", ""]
    studies = res.all_trials.groupby("study") if not res.all_trials.empty else []
    lines += ["## Studies", "", "| study | trials | completed | other statuses |", "|---|---|---|---|"]
    for study, g in studies:
        st = g["status"].value_counts().to_dict() if "status" in g else {}
        other = ", ".join(f"{k}: {v}" for k, v in sorted(st.items()) if k != "completed")
        lines.append(f"| `{study}` | {g['trial_id'].nunique()} | {st.get('completed', 0)} | {other} |")
    if not len(res.all_trials):
        lines.append("| (none) | 0 | 0 | |")
    lines += ["", f"Means use completed trials only; {len(res.trials)} trial(s) used. Regenerated in {seconds:.1f} s.",
              "", "## Artifacts", "", "| artifact | files | from (study: trials) |", "|---|---|---|"]
    for a in report.artifacts:
        stems: dict[str, list[Path]] = {}
        for p in a.paths:
            stems.setdefault(rel(p.with_suffix("")), []).append(p)
        files = "<br>".join(f"`{stem}` " + " ".join(f"[{p.suffix[1:]}]({rel(p)})" for p in ps)
                            for stem, ps in stems.items())
        src = "<br>".join(f"`{s}`: {n}" for s, n in a.sources.items()) or "(no data needed)"
        lines.append(f"| {a.title}{' (' + a.note + ')' if a.note else ''} | {files} | {src} |")
    lines += ["", "## Not made", ""]
    if report.missing:
        lines += ["| artifact | why | make its inputs with |", "|---|---|---|"]
        lines += [f"| {m.title} | {m.why} | `{m.command}` |" for m in report.missing]
    else:
        lines.append("(everything was made)")
    if report.failed:
        lines += ["", "## Failed (bugs: please report)", ""] + [f"- {s}" for s in report.failed]
    path = report.out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin: 1.6em 0 .3em; } code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .caption { font-weight: 600; margin: .8em 0 .2em; }
figure { margin: .8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .files, .src { color: #555; font-size: .85em; } nav li { margin: .1em 0; }
"""


def write_html(report: Report, res: Results, results: str | Path, seconds: float) -> Path:
    """``<out>/index.html``: index.md's page for a browser, with every table (as HTML) and every
    figure (its PNG, relative to the page) inline, and the "not made" list with its commands."""
    import html

    import pandas as pd

    esc = html.escape
    rel = lambda p: Path(p).relative_to(report.out).as_posix()  # noqa: E731
    out = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>segdistill reports from {esc(str(results))}</title><style>{_CSS}</style></head><body>",
           f"<h1>Reports from <code>{esc(str(results))}</code></h1>",
           f"<p>{len(res.trials)} completed trial(s) used (means over seeds of completed trials); "
           f"regenerated in {seconds:.1f} s by <code>python -m analysis</code>.</p>", "<h2>Studies</h2>"]
    rows = []
    if not res.all_trials.empty:
        for study, g in res.all_trials.groupby("study"):
            st = g["status"].value_counts().to_dict() if "status" in g else {}
            other = ", ".join(f"{k}: {v}" for k, v in sorted(st.items()) if k != "completed")
            rows.append(f"<tr><td><code>{esc(str(study))}</code></td><td>{g['trial_id'].nunique()}</td>"
                        f"<td>{st.get('completed', 0)}</td><td>{esc(other)}</td></tr>")
    out.append("<table class='studies'><thead><tr><th>study</th><th>trials</th><th>completed</th>"
               "<th>other statuses</th></tr></thead><tbody>" + ("".join(rows) or "<tr><td>(none)</td><td>0</td>"
                                                              "<td>0</td><td></td></tr>") + "</tbody></table>")
    if report.artifacts:
        out.append("<nav><ul>" + "".join(f"<li><a href='#a{i}'>{esc(a.title)}</a></li>"
                                         for i, a in enumerate(report.artifacts)) + "</ul></nav>")
    out.append("<h2>Artifacts</h2>")
    for i, a in enumerate(report.artifacts):
        out.append(f"<section id='a{i}'><h3>{esc(a.title)}{' (' + esc(a.note) + ')' if a.note else ''}</h3>")
        src = ", ".join(f"<code>{esc(s)}</code>: {n}" for s, n in a.sources.items()) or "no data needed"
        out.append(f"<p class='src'>from {src}</p>")
        stems: dict[Path, list[Path]] = {}
        for p in a.paths:
            stems.setdefault(p.with_suffix(""), []).append(p)
        for stem, ps in stems.items():
            by_ext = {p.suffix[1:]: p for p in ps}
            links = " ".join(f"<a href='{esc(rel(p))}'>{esc(p.suffix[1:])}</a>" for p in ps)
            if "csv" in by_ext:
                table = report.html_tables.get(by_ext["csv"])
                if table is None:  # written outside save_table: the raw numbers
                    table = pd.read_csv(by_ext["csv"]).to_html(index=False, na_rep="", border=0)
                out.append(table + f"<p class='files'><code>{esc(rel(stem))}</code> {links}</p>")
            elif "png" in by_ext:
                out.append(f"<figure><img src='{esc(rel(by_ext['png']))}' alt='{esc(a.title)}'>"
                           f"<figcaption><code>{esc(rel(stem))}</code> {links}</figcaption></figure>")
            else:
                out.append(f"<p class='files'><code>{esc(rel(stem))}</code> {links}</p>")
        out.append("</section>")
    out.append("<h2>Not made</h2>")
    if report.missing:
        out.append("<table class='missing'><thead><tr><th>artifact</th><th>why</th><th>make its inputs with</th>"
                   "</tr></thead><tbody>" + "".join(
                       f"<tr><td>{esc(m.title)}</td><td>{esc(m.why)}</td><td><code>{esc(m.command)}</code></td></tr>"
                       for m in report.missing) + "</tbody></table>")
    else:
        out.append("<p>(everything was made)</p>")
    if report.failed:
        out.append("<h2>Failed (bugs: please report)</h2><ul>" + "".join(f"<li>{esc(f)}</li>" for f in report.failed)
                   + "</ul>")
    out.append("</body></html>")
    path = report.out / "index.html"
    path.write_text("\n".join(out) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results root (default: results)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--embeddings", choices=("tsne", "pca"), default="tsne",
                    help="2-D projection when no precomputed t-SNE columns exist")
    ap.add_argument("--status", action="append", default=None,
                    help="trial statuses to include (repeatable; default: completed)")
    ap.add_argument("--formats", default="png,pdf", help="figure formats, comma-separated (default: png,pdf)")
    ap.add_argument("--only", default=None, help="comma-separated artifact keys (default: all): "
                    + ", ".join(COMMANDS))
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        report = make_all(args.results, args.out, embedding_method=args.embeddings,
                          statuses=tuple(args.status or ("completed",)),
                          only=args.only.split(",") if args.only else None,
                          figure_formats=tuple(f for f in args.formats.split(",") if f))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(report.written)} files ({len(report.artifacts)} artifacts) to {report.out}; "
          f"{len(report.missing)} not made for lack of data; see {report.out / 'index.md'} "
          f"or, in a browser, {report.out / 'index.html'}")
    for s in report.skipped:
        print(f"  {s}")
    if report.failed:
        print("FAILED: " + "; ".join(report.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
