"""The experiment <-> analysis contract (segdistill/catalog.py): tags every trial carries, the one
study-name rule, and the analysis selecting rows by those tags (also for results written before the
``experiment`` tag)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.common import experiment_column, from_experiment, tagged
from segdistill import catalog
from segdistill.study.cli_args import CWD_REFERENCE, ablation_spec
from segdistill.study.presets import get_preset


def test_experiment_tags_and_study_names():
    assert catalog.experiment_tags("compare_methods", "demo", catalog.COMPARISON) == {
        "experiment": "compare_methods", "preset": "demo", "group": "comparison"}
    assert catalog.study_name("ablation_beta", "demo") == "ablation_beta-demo"
    with pytest.raises(KeyError, match="unknown experiment 'ablation_gamma'"):
        catalog.experiment_tags("ablation_gamma", "demo")
    with pytest.raises(ValueError, match="declares groups"):
        catalog.experiment_tags("compare_methods", "demo", catalog.BETA)
    # the longest experiment name wins; benchmark_check's and train_teachers' suffixed studies resolve
    assert catalog.experiment_of_study("benchmark_check-demo-sweep_cwd") == "benchmark_check"
    assert catalog.experiment_of_study("train_teachers-demo-deeplabv3_r101") == "train_teachers"
    assert catalog.experiment_of_study("my_own_study") is None
    assert catalog.producer("fig6").name == "ablation_beta" and catalog.producer("fig3") is None


def test_ablation_spec_tags_every_trial_and_refuses_undeclared_groups():
    smoke = get_preset("smoke")
    spec = ablation_spec("ablation_mu.py", smoke, [{"distill.method": "hwd", "tag.group": catalog.MU}])
    assert dict(spec.tags)["experiment"] == "ablation_mu" and spec.name == "ablation_mu-smoke"
    assert CWD_REFERENCE["tag.group"] in catalog.EXPERIMENTS["ablation_mu"].groups
    with pytest.raises(ValueError, match="does not declare"):
        ablation_spec("ablation_mu.py", smoke, [{"distill.method": "hwd", "tag.group": catalog.BETA}])


def test_analysis_selects_by_the_experiment_tag_then_by_study_name_for_old_results():
    df = pd.DataFrame({
        "study": ["compare_methods-demo", "my_study", "old_compare_methods-demo", "compare_methods-paper"],
        "experiment": ["compare_methods", "compare_methods", None, None],
        "trial_id": ["a", "b", "c", "d"], "method_label": ["HWD"] * 4,
    })
    assert experiment_column(df).tolist() == ["compare_methods", "compare_methods", "", "compare_methods"]
    assert from_experiment(df, "compare_methods")["trial_id"].tolist() == ["a", "b", "d"]


def test_analysis_takes_a_group_from_its_tag_never_from_config_values():
    df = pd.DataFrame({"trial_id": ["a", "b", "c"], "group": ["beta", None, "mu"],
                       "distill.method": ["hwd", "hwd", "hwd"], "distill.beta": [0.1, 0.9, 0.1]})
    assert tagged(df, catalog.BETA)["trial_id"].tolist() == ["a"]  # b varies beta but carries no tag
    assert tagged(df.drop(columns="group"), catalog.BETA).empty and tagged(df.iloc[0:0], catalog.MU).empty


def test_reported_metric_is_the_mean_of_the_last_evaluations():
    """catalog.last_evals_miou: the last LAST_EVALS evaluations by iteration, a repeated iteration once
    (its last record), fewer evaluations averaged as they are, none NaN; FitResult reports it."""
    import math

    from segdistill.train import FitResult

    assert catalog.REPORTED_METRIC == "last_evals_miou" and catalog.LAST_EVALS == 2
    evals = [{"iteration": 10, "val/miou": 0.1}, {"iteration": 20, "val/miou": 0.2},
             {"iteration": 30, "val/miou": 0.3}, {"iteration": 30, "val/miou": 0.5}]
    assert catalog.last_evals_miou(evals) == pytest.approx((0.2 + 0.5) / 2)
    assert catalog.last_evals_miou(evals[:1]) == pytest.approx(0.1)
    assert math.isnan(catalog.last_evals_miou([])) and math.isnan(catalog.last_evals_miou([{"iteration": 5, "val/miou": None}]))
    result = FitResult(config=None, iterations_done=30, best_miou=0.5, final_miou=0.5, pixel_acc=0.9, per_class=[],
                       curves=[], params=1, flops=1.0, wall_time_s=1.0, images_per_s=1.0, device="cpu",
                       checkpoint_dir=None, model_path=None, evals=evals)
    assert result.last_evals_miou == pytest.approx(0.35)
