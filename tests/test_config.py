"""Configs: frozen, validated at construction, flat-dict round trip, unknown keys rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segdistill.config import ConfigError, DistillConfig, OptimConfig, TrainConfig


def test_flat_round_trip():
    cfg = TrainConfig().replace(**{"distill.beta": 0.3, "optim.iterations": 50, "model.arch": "pspnet_tiny_r18"})
    flat = cfg.to_flat()
    assert flat["distill.beta"] == 0.3 and flat["model.arch"] == "pspnet_tiny_r18"
    assert TrainConfig.from_flat(flat) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert all(isinstance(v, (int, float, str, bool)) for k, v in flat.items() if k != "distill.alpha")
    assert flat["distill.alpha"] is None  # None = the method's reference weight


def test_alpha_default_is_the_methods_reference_weight():
    """Unset alpha resolves to the reference weight (3 for CWD/HWD, 1 otherwise) in one place,
    for the Python API, flat overrides (CLI --set, presets) and JSON alike; a set alpha wins."""
    from segdistill.losses import METHODS, reference_alpha

    extra = {"teacher_arch": "deeplabv3_tiny_r101", "teacher_checkpoint": "t.pt"}
    for method in METHODS:
        assert DistillConfig(method=method, **extra).effective_alpha == reference_alpha(method)
    assert DistillConfig(method="skd", **extra).effective_alpha == 1.0
    assert DistillConfig(method="hwd", **extra).effective_alpha == 3.0
    assert DistillConfig(method="skd", alpha=2.5, **extra).effective_alpha == 2.5
    assert DistillConfig(method="skd", alpha=0.0, **extra).effective_alpha == 0.0
    flat = {"distill.method": "skd", "distill.teacher_arch": "deeplabv3_tiny_r101", "distill.teacher_checkpoint": "t.pt"}
    cfg = TrainConfig().replace(**flat)
    assert cfg.distill.alpha is None and cfg.distill.effective_alpha == 1.0
    assert TrainConfig.from_json(cfg.to_json()).distill.effective_alpha == 1.0
    assert cfg.replace(**{"distill.alpha": 3}).distill.effective_alpha == 3.0
    assert cfg.replace(**{"distill.alpha": 3}).replace(**{"distill.alpha": "none"}).distill.alpha is None
    assert TrainConfig().distill.effective_alpha == 0.0  # 'none': no distillation term
    from segdistill.cli import parse_overrides  # the CLI's --set path

    cli = TrainConfig().replace(**parse_overrides([f"{k}={v}" for k, v in flat.items()]))
    assert cli.distill.effective_alpha == 1.0
    assert cli.replace(**parse_overrides(["distill.alpha=2"])).distill.effective_alpha == 2.0
    assert cli.replace(**parse_overrides(["distill.alpha=2"])).replace(
        **parse_overrides(["distill.alpha=none"])).distill.effective_alpha == 1.0
    with pytest.raises(ConfigError, match="alpha"):
        TrainConfig().replace(**{"distill.alpha": -1.0})


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("key", ["distill.betaa", "nope.beta", "beta", "distill."])
def test_unknown_keys_rejected(key):
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig().replace(**{key: 1})


@pytest.mark.parametrize("kwargs, field", [
    ({"beta": 1.0}, "beta"), ({"beta": 0.0}, "beta"), ({"sigma": 0.0}, "sigma"), ({"method": "foo"}, "method"),
    ({"pixel_correction": "x"}, "pixel_correction"), ({"weighting": "x"}, "weighting"),
    ({"alpha": float("nan")}, "alpha"), ({"method": "hwd"}, "teacher_arch"),
])
def test_distill_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**kwargs)


def test_types_are_checked_and_numpy_scalars_accepted():
    with pytest.raises(ConfigError, match="must be a int"):
        TrainConfig().replace(**{"optim.iterations": "ten"})
    with pytest.raises(ConfigError, match="bool"):
        TrainConfig().replace(**{"run.amp": 1})
    cfg = TrainConfig().replace(**{"distill.beta": np.float64(0.5), "optim.iterations": np.int64(7), "distill.alpha": 2})
    assert cfg.distill.beta == 0.5 and cfg.optim.iterations == 7 and isinstance(cfg.distill.alpha, float)
    with pytest.raises(ConfigError):
        OptimConfig(iterations=0)


def test_retired_pair_pool_key_says_what_replaced_it():
    with pytest.raises(ConfigError, match="skd_pair_pool.*cirkd_pair_pool"):
        TrainConfig().replace(**{"distill.pair_pool": 2})
