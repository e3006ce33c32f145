"""Configs: frozen, validated at construction, flat-dict round trip, unknown keys rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segdistill.config import ConfigError, DistillConfig, OptimConfig, TrainConfig, flat_keys
from segdistill.losses import METHODS, CWDParams, HWDParams, MethodParams, params_class


HWD = {"distill.method": "hwd", "distill.teacher_arch": "deeplabv3_tiny_r101", "distill.teacher_checkpoint": "t.pt"}


def test_flat_round_trip():
    cfg = TrainConfig().replace(**HWD, **{"distill.beta": 0.3, "optim.iterations": 50, "model.arch": "pspnet_tiny_r18"})
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
    cfg = TrainConfig().replace(**HWD, **{"distill.beta": np.float64(0.5), "optim.iterations": np.int64(7),
                                          "distill.alpha": 2})
    assert cfg.distill.params.beta == 0.5 and cfg.optim.iterations == 7 and isinstance(cfg.distill.alpha, float)
    with pytest.raises(ConfigError):
        OptimConfig(iterations=0)


def test_retired_pair_pool_key_says_what_replaced_it():
    with pytest.raises(ConfigError, match="skd_pair_pool.*cirkd_pair_pool"):
        TrainConfig().replace(**{"distill.pair_pool": 2})


# ---------------------------------------------------------------- each method owns its parameters
TEACHER = {"distill.teacher_arch": "deeplabv3_tiny_r101", "distill.teacher_checkpoint": "t.pt"}


def test_params_are_the_methods_dataclass():
    assert TrainConfig().distill.params == MethodParams()
    cfg = TrainConfig().replace(**HWD, **{"distill.beta": 0.3})
    assert cfg.distill.params == HWDParams(beta=0.3)
    assert DistillConfig(method="cwd", tau=2.0, **{k.split(".")[1]: v for k, v in TEACHER.items()}).params == CWDParams(tau=2.0)


@pytest.mark.parametrize("params, match", [
    (lambda: HWDParams(beta=1.0), "distill.beta must be in"), (lambda: HWDParams(weighting="x"), "distill.weighting"),
    (lambda: CWDParams(tau=0.0), "distill.tau must be > 0"), (lambda: params_class("dist")(dist_intra_weight=-1.0),
                                                             "distill.dist_intra_weight must be >= 0"),
    (lambda: params_class("kd")(kd_temperature=float("inf")), "distill.kd_temperature must be a finite number"),
])
def test_each_params_dataclass_validates_its_fields(params, match):
    with pytest.raises(ConfigError, match=match):
        params()


def test_to_flat_carries_only_the_own_methods_params():
    for method in METHODS:
        flat = TrainConfig().replace(**TEACHER, **{"distill.method": method}).to_flat()
        own = {k for k in flat if k.startswith("distill.")} - {"distill.method", "distill.alpha", "distill.teacher_arch",
                                                                "distill.teacher_checkpoint"}
        assert own == {f"distill.{f.name}" for f in dataclasses.fields(params_class(method))}
    assert "distill.beta" not in TrainConfig().to_flat()
    assert "distill.beta" in flat_keys() and "distill.cirkd_pixel_memory" in flat_keys()


def test_foreign_parameter_is_an_error_unless_missing():
    cwd = TrainConfig().replace(**TEACHER, **{"distill.method": "cwd"})
    with pytest.raises(ConfigError, match="distill.beta is a parameter of hwd, not of cwd"):
        cwd.replace(**{"distill.beta": 0.3})
    with pytest.raises(ConfigError, match="distill.kd_weight is a parameter of cirkd, ifvd, skd, not of none"):
        TrainConfig().replace(**{"distill.kd_weight": 2.0})
    # a missing Parquet cell (None / NaN) of another method's column is ignored
    assert cwd.replace(**{"distill.beta": float("nan"), "distill.mgd_weight": np.float64("nan"),
                          "distill.skd_pair_pool": None}) == cwd
    # the method is applied first, whatever the key order; a new method starts from its defaults
    hwd = cwd.replace(**{"distill.tau": 2.0, "distill.beta": 0.3, "distill.method": "hwd"})
    assert hwd.distill.params == HWDParams(tau=2.0, beta=0.3)
    assert hwd.replace(**{"distill.method": "cwd"}).distill.params == CWDParams()
    assert hwd.replace(**{"distill.method": "hwd"}).distill.params == HWDParams(tau=2.0, beta=0.3)
    with pytest.raises(ConfigError, match="distill.beta is a parameter of hwd, not of none"):
        DistillConfig(beta=0.3)


def test_registry_round_trip():
    """Every registered method: its flat keys are its dataclass's fields, and the flat dict (and
    JSON) rebuild the same config, also from a row that carries every method's columns as NaN."""
    every = {k: float("nan") for k in flat_keys() if k.startswith("distill.")}
    for method in METHODS:
        cfg = TrainConfig().replace(**TEACHER, **{"distill.method": method})
        assert isinstance(cfg.distill.params, METHODS[method].params_class)
        flat = cfg.to_flat()
        assert TrainConfig.from_flat(flat) == cfg and TrainConfig.from_json(cfg.to_json()) == cfg
        row = {**every, **{k: v for k, v in flat.items() if v is not None}}
        assert TrainConfig.from_flat(row) == cfg


def test_flat_dicts_of_earlier_versions_with_every_methods_keys_still_read():
    """Checkpoints written when every config carried every method's parameters (runstate.restore)."""
    from segdistill.config import own_method_keys

    cfg = TrainConfig().replace(**HWD, **{"distill.beta": 0.3})
    old = {**{k: 1.0 for k in flat_keys() if k.startswith("distill.") and k not in cfg.to_flat()}, **cfg.to_flat()}
    with pytest.raises(ConfigError, match="not of hwd"):
        TrainConfig.from_flat(old)
    assert TrainConfig.from_flat(own_method_keys(old)) == cfg


def test_presets_carry_method_parameters_apart_from_their_none_base():
    """The paper/released presets' HWD recipe (mu, N_c correction) reaches every HWD variant."""
    from segdistill.losses import KDParams
    from segdistill.study.presets import get_preset

    p = get_preset("released", data_root="/data")
    assert p.base.distill.method == "none" and p.base.distill.params == MethodParams()
    hwd, none = p.variants([{"distill.method": "hwd", "distill.beta": 0.2}, {"distill.method": "none"}])
    assert (hwd["distill.mu"], hwd["distill.pixel_correction"], hwd["distill.beta"]) == (1.0, "none", 0.2)
    assert none == {"distill.method": "none"}
    assert p.params("hwd") == HWDParams(mu=1.0, pixel_correction="none") and p.params("kd") == KDParams()
    assert get_preset("paper", data_root="/data", dataset="cocostuff").params("hwd").mu == 0.1


def test_recipe_hash_is_what_it_was_when_every_config_carried_every_method_parameter():
    """Zoo teachers trained before each method owned its parameters are found: the recipe hash adds
    the other methods' defaults back (values computed with the code at fd0bb55)."""
    from segdistill.study.spec import recipe_hash

    assert recipe_hash(TrainConfig()) == "bae931d07611"
    assert recipe_hash(TrainConfig().replace(**{"model.arch": "deeplabv3_tiny_r101", "optim.iterations": 300})) \
        == "4a8886cf2c96"
