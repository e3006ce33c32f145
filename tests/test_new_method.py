"""Adding a distillation method touches its own code and one registry line (issue 17's promise).

A toy method - its maths, a frozen parameter dataclass and a distiller, all defined here as they
would be in ``losses/<method>.py`` - is registered with ``register_method`` and nothing else; the
config then takes its parameters as flat keys, validates them, refuses them on other methods,
trains with them, and the results row carries them as columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.nn.functional as F
from ray_helpers import tiny_base

from segdistill.config import TrainConfig, flat_keys, param_owners
from segdistill.errors import ConfigError
from segdistill.losses import METHODS, register_method
from segdistill.losses.distiller import Distiller
from segdistill.losses.params import MethodParams, require_nonnegative
from segdistill.results import read_trials, record_from_fit, write_trial
from segdistill.train import fit

TEACHER, STUDENT = "deeplabv3_tiny_r101", "deeplabv3_tiny_r18"


@dataclass(frozen=True)
class ToyParams(MethodParams):
    """``toy_weight``: the weight of the logit L2 term (>= 0)."""

    toy_weight: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative("toy_weight", self.toy_weight)


class ToyDistiller(Distiller):
    """Mean squared difference of the logits, weighted by ``distill.toy_weight``."""

    params_class = ToyParams
    zero_at_equality = ("toy",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return {"toy": self.params.toy_weight * F.mse_loss(s_logits.float(), t_logits.float())}


@pytest.fixture
def toy_method():
    register_method("toy")(ToyDistiller)  # the one registry line
    try:
        yield "toy"
    finally:
        METHODS.pop("toy", None)


def _tiny(out: Path, **over) -> TrainConfig:
    """The suite's tiny run (ray_helpers.tiny_base: 2 iterations, one evaluation) writing to ``out``."""
    return tiny_base(2, 2).replace(**{"run.out_dir": str(out), "run.log_every": 1, **over})


def test_a_registered_method_gets_config_keys_validation_and_ownership(toy_method):
    base = TrainConfig().replace(**{"distill.teacher_arch": TEACHER, "distill.teacher_checkpoint": "teacher.pt"})
    assert "distill.toy_weight" in flat_keys() and param_owners("toy_weight") == ("toy",)
    cfg = base.replace(**{"distill.method": "toy", "distill.toy_weight": 0.25})
    assert cfg.distill.params == ToyParams(toy_weight=0.25)
    flat = cfg.to_flat()
    assert flat["distill.toy_weight"] == 0.25 and "distill.beta" not in flat  # only its own parameters
    assert TrainConfig.from_flat(flat) == cfg
    assert base.replace(**{"distill.method": "toy"}).distill.params.toy_weight == 0.5  # its default
    with pytest.raises(ConfigError, match="distill.toy_weight must be >= 0"):
        base.replace(**{"distill.method": "toy", "distill.toy_weight": -1.0})
    with pytest.raises(ConfigError, match="toy"):  # another method's config refuses the toy's parameter
        base.replace(**{"distill.method": "hwd", "distill.toy_weight": 0.25})


def test_a_registered_method_trains_and_its_parameters_land_in_parquet(tmp_path, toy_method):
    teacher = fit(_tiny(tmp_path / "teacher", **{"model.arch": TEACHER}))
    cfg = _tiny(tmp_path / "student", **{"distill.method": "toy", "distill.toy_weight": 0.25,
                                         "distill.teacher_arch": TEACHER,
                                         "distill.teacher_checkpoint": str(teacher.model_path)})
    logs = []

    class Logs:
        def on_log(self, record):
            logs.append(record)

    res = fit(cfg, [Logs()])
    assert logs and all(math.isfinite(r["loss/distill"]) and r["loss/distill"] > 0 for r in logs)  # its one term
    assert res.effective_alpha == 1.0  # reference_alpha defaults to 1
    write_trial(tmp_path / "results", record_from_fit(res, study="toy", trial_id="t0"))
    row = read_trials(tmp_path / "results", "toy").iloc[0]
    assert row["distill.method"] == "toy" and row["distill.toy_weight"] == 0.25
