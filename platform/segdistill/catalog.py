"""The contract between the experiment scripts and the analysis: which script writes which runs,
how its trials are tagged, and which tables and figures read them.

Every trial an experiment script runs carries two tags (columns of the ``trials`` table):
``experiment`` (the script's name, :data:`EXPERIMENTS`) and, for students, ``group`` (what the run
is part of, :data:`GROUPS`); the zoo teacher copied into a study carries the study's
``experiment`` tag with ``role == "teacher"``. The analysis selects rows by these two tags only
(``analysis.common.rows_of``): it never parses script names or guesses from config values.
The study directory of a script and preset is :func:`study_name`.

Results written before the ``experiment`` tag existed get it from their study name, by the one
rule :func:`study_name` writes (``<experiment>-<preset>``, :func:`experiment_of_study`).

Adding an experiment: write ``experiments/<name>.py`` (tags from :func:`experiment_tags`), add one
:class:`Experiment` line here, and let the analysis product select ``rows_of(df, "<name>", ...)``;
``tests/test_catalog.py`` checks that scripts on disk and this table agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LAST_EVALS = 2
"""How many of a run's last evaluations :data:`REPORTED_METRIC` averages."""

REPORTED_METRIC = "last_evals_miou"
"""The metric every experiment script's table and every analysis product reports: the mean val mIoU
of a run's last :data:`LAST_EVALS` evaluations (:func:`last_evals_miou`; the final model's and the
one before it, no selection on the validation split). Fixed by ``experiments/benchmark_check.py``'s
baseline seed stds over three data instances before methods were compared: ``final_miou``'s std
was 0.0103 on one instance (the limit is 0.01), this one's at most 0.0075 (benchmarks/RESULTS.md,
"Evaluation protocol")."""


def last_evals_miou(evals: Sequence[Mapping[str, Any]]) -> float:
    """:data:`REPORTED_METRIC` of one run: the mean ``val/miou`` of its last :data:`LAST_EVALS`
    evaluations (records with ``iteration`` and ``val/miou``; an iteration evaluated twice, e.g.
    around a restart, counts once, its last record). Fewer evaluations: the mean of those; none: NaN."""
    by_iteration: dict[int, float] = {}
    for e in evals:
        miou = e.get("val/miou")
        if miou is not None:
            by_iteration[int(e["iteration"])] = float(miou)
    last = [by_iteration[i] for i in sorted(by_iteration)][-LAST_EVALS:]
    return sum(last) / len(last) if last else math.nan


# the group tags (``tag.group`` of a variant, or ``group`` in a study's tags)
COMPARISON = "comparison"  # Tables II/III: every method x student x dataset
CLASS_ANALYSIS = "class_analysis"  # Table I, Figs. 2/4/5: per-class IoU, samples, embeddings
BETA = "beta"  # Fig. 6: HWD's smoothing strength beta
SOFTMAX = "softmax"  # Fig. 6: the softmax weighting alternative (tau')
MU = "mu"  # Fig. 7: the smoothing centre mu
PIXEL_CORRECTION = "pixel_correction"  # CD/(N_c+1) versus the released code's recipe
CWD_REF = "cwd_ref"  # the CWD reference every ablation setting is compared with
SEARCH = "search"  # Optuna search trials (search_hwd, benchmark_check's sweeps)
BENCHMARK = "benchmark"  # benchmark_check's baseline and distilled arms
TEACHERS = "teachers"  # train_teachers: zoo teachers only

GROUPS = {
    COMPARISON: "method comparison (Tables II/III)",
    CLASS_ANALYSIS: "class-level analysis (Table I, Figs. 2, 4, 5)",
    BETA: "beta ablation (Fig. 6)",
    SOFTMAX: "softmax weighting (Fig. 6)",
    MU: "mu ablation (Fig. 7)",
    PIXEL_CORRECTION: "pixel correction ablation",
    CWD_REF: "the ablations' CWD reference",
    SEARCH: "hyper-parameter search",
    BENCHMARK: "benchmark check arms",
    TEACHERS: "zoo teachers",
}
ABLATION_GROUPS = frozenset({BETA, SOFTMAX, MU, PIXEL_CORRECTION, CWD_REF})


@dataclass(frozen=True)
class Experiment:
    """One script ``experiments/<name>.py``: the groups its trials carry and what reads them."""

    name: str
    groups: tuple[str, ...]
    products: tuple[str, ...]  # analysis artifacts (analysis.make_all keys) made from its runs
    about: str


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("train_teachers", (TEACHERS,), (), "zoo teachers per architecture and dataset"),
    Experiment("compare_methods", (COMPARISON,), ("table2", "table3", "fig_methods"), "Tables II/III"),
    Experiment("class_analysis", (CLASS_ANALYSIS,), ("table1", "fig2", "fig4", "fig5", "fig_hwd_minus_cwd"),
               "Table I, Figs. 2/4/5"),
    Experiment("ablation_beta", (BETA, SOFTMAX, CWD_REF), ("fig6",), "Fig. 6: beta and softmax weighting"),
    Experiment("ablation_mu", (MU, CWD_REF), ("fig7",), "Fig. 7: mu"),
    Experiment("ablation_pixel_correction", (PIXEL_CORRECTION, CWD_REF), ("pixel_correction",),
               "the N_c pixel correction"),
    Experiment("search_hwd", (SEARCH,), ("search",), "Optuna search over HWD's hyper-parameters"),
    Experiment("benchmark_check", (BENCHMARK, SEARCH), (), "does the benchmark answer distillation questions"),
)}


def producer(product: str) -> Experiment | None:
    """The experiment whose runs the analysis product ``product`` is made from (None: analytic or any)."""
    return next((e for e in EXPERIMENTS.values() if product in e.products), None)


def study_name(experiment: str, preset: str) -> str:
    """``ablation_beta-demo``: one study (results directory) per experiment and preset."""
    return f"{experiment}-{preset}"


def experiment_of_study(study: str) -> str | None:
    """The experiment whose :func:`study_name` ``study`` is (its longest matching name), else None.
    Only for results written before trials carried the ``experiment`` tag."""
    names = sorted((n for n in EXPERIMENTS if study == n or study.startswith(f"{n}-")), key=len)
    return names[-1] if names else None


def experiment_tags(experiment: str, preset: str, group: str | None = None) -> dict[str, Any]:
    """The study tags every trial of ``experiments/<experiment>.py`` carries (``group`` for studies
    whose students all share one; ablations tag each variant with ``tag.group`` instead)."""
    exp = EXPERIMENTS.get(experiment)
    if exp is None:
        raise KeyError(f"unknown experiment {experiment!r}; the catalog has {sorted(EXPERIMENTS)}")
    if group is not None and group not in exp.groups:
        raise ValueError(f"experiment {experiment!r} declares groups {list(exp.groups)}, not {group!r}")
    return {"experiment": experiment, "preset": preset, **({"group": group} if group else {})}


def check_variant_groups(experiment: str, variants: Any) -> None:
    """Every ``tag.group`` among ``variants`` (mappings) is one the catalog declares for ``experiment``."""
    declared = set(EXPERIMENTS[experiment].groups)
    used = {v["tag.group"] for v in variants if isinstance(v, Mapping) and "tag.group" in v}
    if used - declared:
        raise ValueError(f"experiment {experiment!r} tags groups {sorted(used - declared)} its catalog entry "
                         f"(segdistill/catalog.py) does not declare ({sorted(declared)})")
