"""What a study is: a base :class:`TrainConfig`, the settings to try, how to search and where to run.

This module holds plain data (no Ray import) so experiment scripts and tests can build and inspect
a :class:`StudySpec` without starting anything. :func:`segdistill.study.run_study` executes it.

Settings to try are *variants*: flat override dicts (``{"distill.beta": 0.3}``) applied to
``base`` with :meth:`TrainConfig.replace`. A cartesian ``grid`` (``{"distill.mu": [0, 1]}``) is
expanded into variants; explicit ``variants`` express non-rectangular ablations (HWD's beta list
plus the softmax alternative plus the CWD reference, paper Fig. 6). Every variant runs once per
seed. With ``search="optuna"`` a define-by-run ``space`` function (module level, so it pickles)
proposes further overrides per trial.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..config import ConfigError, DistillConfig, TrainConfig, known_methods
from ..losses import params_class
from ..results import _NAME_RE  # one naming rule for studies and result files

SEARCHES = ("grid", "optuna")
SCHEDULERS = ("none", "asha")
TRIAL_SHAPES = ("inline", "train")
TAG_PREFIX = "tag."
PENDING_TEACHER = "zoo:pending"  # variant keys starting with this are result tags, not config overrides


@dataclass(frozen=True)
class Resources:
    """Resources of one trial.

    ``shape="inline"``: the trial process itself trains and holds ``cpus`` CPUs and ``gpus`` GPUs
    (fractions allowed, e.g. ``gpus=0.25`` packs four small students on one GPU).
    ``shape="train"``: the trial process is a light driver (no CPU) launching ``num_workers`` Ray
    Train workers, each holding ``cpus`` CPUs and ``gpus`` GPUs (DDP; gloo on CPU, NCCL on GPU).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ConfigError(f"resources must be >= 0, got cpus={self.cpus}, gpus={self.gpus}")
        if self.num_workers < 1:
            raise ConfigError(f"resources.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus == 0 and self.gpus == 0:
            raise ConfigError("a trial needs some CPU or GPU (resources.cpus and .gpus are both 0)")

    def per_trial(self, shape: str) -> dict[str, float]:
        n = self.num_workers if shape == "train" else 1
        return {"CPU": self.cpus * n, "GPU": self.gpus * n}


@dataclass(frozen=True)
class TeacherRecipe:
    """How to train the teacher a student needs: the student's data config, a teacher architecture,
    CE only (``distill.method="none"``), and optimiser overrides (docs/REFERENCE.md "Training recipe":
    80k-160k iterations advised for ADE20K/COCO-Stuff teachers; the tiny synthetic ones need a few
    hundred)."""

    arch: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def config_for(self, student: TrainConfig) -> TrainConfig:
        """The teacher's TrainConfig for ``student``: same data and run settings, teacher model.

        A student's ``model.pretrained`` directory (the reference's ImageNet files, one per backbone)
        serves the teacher too; a single file is the student's backbone only and is dropped."""
        pretrained = student.model.pretrained if student.model.pretrained and os.path.isdir(
            os.path.expanduser(student.model.pretrained)) else ""
        flat = {"model.arch": self.arch, "model.pretrained": pretrained,
                "run.embedding_pixels": 0, "run.sample_images": 0,
                "run.seed": 0}  # one teacher per recipe, shared by every student seed
        flat.update(self.overrides)
        # the student's distillation settings never change its teacher: CE only, defaults
        return dataclasses.replace(student, distill=DistillConfig()).replace(**flat)


@dataclass(frozen=True)
class StudySpec:
    """One study: every field is explained in the module docstring and the README.

    ``metric``/``mode`` name what Tune schedules and Optuna optimises (reported by every trial at
    each evaluation: ``val_miou``, ``val_pixel_acc``, ``best_miou``, ``iteration``).
    ``asha_grace`` (iterations; 0 = the first evaluation) and ``asha_reduction`` configure ASHA,
    which compares trials at evaluation iterations (``time_attr="iteration"``).
    ``teacher``: if set, every variant whose method distils (or whose ``tag.role`` is "teacher")
    gets a zoo teacher trained from this recipe; ``None``: variants must name their checkpoint.
    ``max_concurrent``: 0 = derived from the cluster's resources and ``resources``.
    ``on_missing_dashboard``: what to do when Train-backed trials may be stopped but Ray's state API
    (the dashboard) is unavailable: "reap" (the driver releases stopped trials' placement groups
    itself), "inline" (run the trials inline instead) or "error".
    ``cohort_size``: grid studies without early stopping train up to this many compatible
    configurations (same data, student, schedule, seed and teacher) in one trial, sharing the data
    stream and the teacher forward (:func:`segdistill.study.trial.cohort_trainable`); 1 = one trial each.
    ``teacher_cache``: trials share cached teacher logits (``<zoo>/_logits``) where the augmentation is
    finite (:mod:`segdistill.teacher_cache`).
    """

    name: str
    base: TrainConfig
    variants: Sequence[Mapping[str, Any]] = ({},)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    search: str = "grid"
    space: Callable[[Any], Mapping[str, Any] | None] | None = None
    num_samples: int = 1
    search_seed: int = 0
    scheduler: str = "none"
    asha_grace: int = 0
    asha_reduction: int = 2
    metric: str = "val_miou"
    mode: str = "max"
    shape: str = "inline"
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int = 0
    teacher: TeacherRecipe | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    on_missing_dashboard: str = "reap"
    max_failures: int = 0
    cohort_size: int = 8
    teacher_cache: bool = True

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"study name {self.name!r} must match {_NAME_RE.pattern}")
        _choice("search", self.search, SEARCHES)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("shape", self.shape, TRIAL_SHAPES)
        _choice("mode", self.mode, ("min", "max"))
        _choice("on_missing_dashboard", self.on_missing_dashboard, ("reap", "inline", "error"))
        if self.search == "optuna":
            if self.space is None or not callable(self.space):
                raise ConfigError("search='optuna' needs a define-by-run `space` function (module level)")
            if getattr(self.space, "__qualname__", "").count("<locals>") or getattr(self.space, "__name__", "") == "<lambda>":
                raise ConfigError("the optuna `space` function must be defined at module level so it pickles")
        if self.search == "optuna" and len(self.expand_variants()) != 1:
            raise ConfigError("search='optuna' takes one variant (put alternatives in the space function)")
        if not self.variants:
            raise ConfigError("StudySpec.variants is empty: the search space has no setting to run; give at least "
                              "one override dict ({} runs the base config)")
        for key, values in self.grid.items():
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
                raise ConfigError(f"StudySpec.grid[{key!r}] = {values!r}: the search space is empty along this key; "
                                  "give a non-empty list of values")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.cohort_size < 1:
            raise ConfigError(f"cohort_size must be >= 1 (1 = no cohorts), got {self.cohort_size}")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if self.asha_grace < 0 or self.asha_reduction < 2:
            raise ConfigError("asha_grace must be >= 0 and asha_reduction >= 2")
        self.variant_configs  # noqa: B018 - every variant's config is built (and validated) at construction

    # -- variants -----------------------------------------------------------------------------
    def expand_variants(self) -> list[dict[str, Any]]:
        """``variants`` x cartesian ``grid``: the list of override dicts each seed runs."""
        keys = list(self.grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))] or [{}]
        out = [{**dict(v), **c} for v in (self.variants or ({},)) for c in combos]
        return out

    def config_for(self, variant: Mapping[str, Any], seed: int, extra: Mapping[str, Any] | None = None) -> TrainConfig:
        """The TrainConfig of one trial (tags dropped, seed set)."""
        flat = {k: v for k, v in variant.items() if not k.startswith(TAG_PREFIX)}
        flat.update(extra or {})
        flat["run.seed"] = int(seed)
        method = flat.get("distill.method", self.base.distill.method)
        checkpoint = flat.get("distill.teacher_checkpoint", self.base.distill.teacher_checkpoint)
        if self.teacher is not None and method != "none" and not checkpoint:
            # filled with the zoo path by run_study once the teacher exists
            flat["distill.teacher_arch"] = self.teacher.arch
            flat["distill.teacher_checkpoint"] = PENDING_TEACHER
        return self.base.replace(**flat)

    @functools.cached_property
    def variant_configs(self) -> tuple[TrainConfig, ...]:
        """Each variant's TrainConfig with the first seed: what the checks before Ray and the zoo
        look at (data, models, teachers; the seed changes none of them). Built once per spec."""
        return tuple(self.config_for(v, self.seeds[0]) for v in self.expand_variants())

    @functools.cached_property
    def teacher_configs(self) -> tuple[TrainConfig | None, ...]:
        """Per variant, the TrainConfig of the zoo teacher it needs (None: it needs none). Built once per spec."""
        return tuple(self.teacher.config_for(c) if self.teacher is not None and self.needs_teacher(c) else None
                     for c in self.variant_configs)

    def num_trials(self) -> int:
        if self.search == "optuna":
            return self.num_samples
        return len(self.expand_variants()) * len(self.seeds) * self.num_samples

    def needs_teacher(self, cfg: TrainConfig) -> bool:
        return self.teacher is not None and cfg.distill.method != "none"

    def replace(self, **changes: Any) -> "StudySpec":
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"StudySpec.{name} must be one of {tuple(allowed)}, got {value!r}")


# -- helpers shared by the runner and the zoo -------------------------------------------------
_RUN_FIELDS_IN_RECIPE = ("run.seed",)


def recipe_hash(cfg: TrainConfig, length: int = 12) -> str:
    """A stable hash of what determines a trained model: data, model, distill, optim and seed.

    Run-time settings (out_dir, device, progress, eval cadence, threads) are excluded, so the
    same teacher trained on a laptop or a cluster is the same zoo entry.
    """
    flat = {**_every_method_default(), **cfg.to_flat()}
    keep = {k: _canon(v) for k, v in flat.items()
            if not k.startswith("run.") or k in _RUN_FIELDS_IN_RECIPE}
    keep.pop("data.root", None)  # where the dataset lives is not what it is
    keep.pop("data.num_workers", None)
    keep.pop("model.pretrained", None)
    if flat.get("model.pretrained"):
        keep["model.pretrained_name"] = os.path.basename(str(flat["model.pretrained"]))
    blob = json.dumps(keep, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@functools.cache
def _every_method_default() -> dict[str, Any]:
    """``distill.<field>``: its default, for every method's parameters. A config's flat dict carries
    only its own method's; the recipe hash adds the others' defaults so that it stays what it was
    when every config carried every method's parameters (zoo teachers trained then are found)."""
    out: dict[str, Any] = {}
    for method in known_methods():
        for f in dataclasses.fields(params_class(method)):
            if f.default is not dataclasses.MISSING:
                out.setdefault(f"distill.{f.name}", f.default)
    return out


def _canon(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return float(v)
    return v


def safe_name(text: str) -> str:
    """A results-file-safe version of ``text`` (letters, digits, ``_ . = + , @ -``)."""
    out = "".join(c if (c.isalnum() or c in "_.=+,@-") else "_" for c in str(text))
    return out.lstrip(".") or "x"
