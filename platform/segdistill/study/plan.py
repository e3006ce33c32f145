"""A study's trials, planned once on the driver: one :class:`TrialPlan` per configuration.

Once the zoo has filled in every teacher (:func:`segdistill.study.runner.ensure_teachers`), the
driver turns each (setting, seed) into a :class:`TrialPlan`: the configuration's ``TrainConfig``
(built here, once), its result tags and, for a zoo teacher, its record id. The plans travel to the
trials inside :class:`TrialContext` (``tune.with_parameters``); a Tune config names its plan by
setting and seed (:mod:`segdistill.study.names`), so the values themselves never travel through Tune.

A Tune trial holds one configuration or, for a cohort trial, several (:func:`plan_cohorts`);
:func:`trial_members` lists them as :class:`TrialMember` s, each with the one id it is known by
everywhere: its *record id* (the Parquet ``trial_id``, its run directory ``runs/<record id>``, its
MLflow run): the Tune trial's id, ``<trial id>_<j>`` for member ``j`` of a cohort trial, or a zoo
teacher's own record id. The configuration a member trains is :func:`member_config`: its plan's
config plus what only the trial knows (its run directory, Optuna's suggested values, the threads
or device Ray gave it) in one ``replace``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cohort import cohort_signature
from ..config import TrainConfig
from .names import LEGACY_SEED_KEY, LEGACY_VARIANT_KEY, MEMBERS_KEY, SEED_KEY, SETTING_KEY
from .spec import TAG_PREFIX, Resources, StudySpec

RECORD_ID_TAG = "record_id"  # a variant's ``tag.record_id``: its fixed record id (zoo teachers)


@dataclass(frozen=True)
class TrialPlan:
    """One configuration of a study: ``setting`` run with ``seed``.

    ``overrides``: the flat keys the setting sets (teachers resolved; what a recorded row is matched
    against). ``config``: the full TrainConfig (``run.progress`` off; ``run.out_dir`` is the trial's).
    ``tags``: its result tags (the study's and the setting's ``tag.*`` keys). ``record_id``: fixed
    for zoo teachers, "" for students (their Tune trial decides it). ``out_dir``: a run directory the
    setting names itself (zoo teachers), "" for ``runs/<record id>``.
    """

    setting: str
    seed: int
    overrides: Mapping[str, Any]
    config: TrainConfig
    tags: Mapping[str, Any]
    record_id: str = ""
    out_dir: str = ""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study needs besides its Tune config (passed with tune.with_parameters)."""

    study: str
    results_root: str
    runs_root: str
    storage_path: str
    plans: tuple[TrialPlan, ...]
    shape: str = "inline"
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 0
    verbose: int = 0  # > 0: Ray's INFO logs in the trial processes stay on

    @property
    def settings(self) -> list[str]:
        """The study's setting names, in the order they were planned."""
        return list(dict.fromkeys(p.setting for p in self.plans))

    def plan(self, setting: str, seed: int | None) -> TrialPlan:
        """The plan of ``setting`` run with ``seed`` (None: the setting's only plan, a zoo teacher's)."""
        for p in self.plans:
            if p.setting == setting and (seed is None or p.seed == int(seed)):
                return p
        raise KeyError(f"the trial's config names setting {setting!r} seed {seed}, which study {self.study!r} does not "
                       f"plan (its settings: {', '.join(map(repr, self.settings))})")


def plan_trials(base: TrainConfig, variants: Sequence[Mapping[str, Any]], names: Sequence[str],
                seeds: Sequence[int] | None, tags: Mapping[str, Any], shape: str) -> tuple[TrialPlan, ...]:
    """One plan per variant x seed (``seeds`` None: each variant once, with the seed it sets).

    ``variants`` are flat override dicts with their teachers resolved; their ``tag.*`` keys become
    result tags (``tag.record_id`` the record id, ``run.out_dir`` the run directory).
    """
    plans = []
    for name, variant in zip(names, variants):
        own_tags = {**dict(tags), **{k[len(TAG_PREFIX):]: v for k, v in variant.items() if k.startswith(TAG_PREFIX)}}
        record_id = str(own_tags.pop(RECORD_ID_TAG, ""))
        own_tags.setdefault("trial_shape", shape)
        overrides = {k: v for k, v in variant.items() if not k.startswith(TAG_PREFIX)}
        out_dir = str(overrides.pop("run.out_dir", ""))
        for seed in (seeds if seeds is not None else (int(overrides.get(SEED_KEY, 0)),)):
            config = base.replace(**{**overrides, SEED_KEY: int(seed), "run.progress": False})
            plans.append(TrialPlan(setting=str(name), seed=int(seed), overrides=overrides, config=config,
                                   tags=own_tags, record_id=record_id, out_dir=out_dir))
    return tuple(plans)


@dataclass(frozen=True)
class TrialMember:
    """One configuration of one Tune trial: its plan, its record id, its place in a cohort (``index``,
    None for a trial of its own) and the flat keys its Tune config adds (Optuna's suggestions)."""

    plan: TrialPlan
    record_id: str
    index: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        """The iterations it trains (its schedule), without building its config."""
        return int(self.extra.get("optim.iterations", self.plan.config.optim.iterations))

    def out_dir(self, ctx: TrialContext) -> str:
        return self.plan.out_dir or str(Path(ctx.runs_root) / self.record_id)

    def tags(self, trial_id: str) -> dict[str, Any]:
        """The member's result tags, Tune's trial id among them."""
        return {**dict(self.plan.tags), "tune_trial_id": trial_id}


def member_id(trial_id: str, j: int) -> str:
    """Record id (and run directory name) of member ``j`` of cohort trial ``trial_id``."""
    return f"{trial_id}_{j}"


def _member(ctx: TrialContext, config: Mapping[str, Any], record_id: str, index: int | None) -> TrialMember:
    """The member a Tune config (``{"setting": name, "run.seed": s, ...}``, or ``{"variant": i, "seed": s}``
    from before setting names) names."""
    if SETTING_KEY in config:
        setting = str(config[SETTING_KEY])
    else:
        setting = ctx.settings[int(config.get(LEGACY_VARIANT_KEY, 0))]
    seed = config.get(SEED_KEY, config.get(LEGACY_SEED_KEY))
    plan = ctx.plan(setting, seed)
    extra = {k: v for k, v in config.items() if "." in k and not k.startswith(TAG_PREFIX) and k != SEED_KEY}
    return TrialMember(plan=plan, record_id=plan.record_id or record_id, index=index, extra=extra)


def trial_members(ctx: TrialContext, trial_id: str, config: Mapping[str, Any]) -> list[TrialMember]:
    """The configurations Tune trial ``trial_id`` trains: its own, or each member of a cohort trial
    (``{"members": [[setting, seed], ...]}``; ``[[variant index, seed], ...]`` from before names)."""
    if MEMBERS_KEY not in config:
        return [_member(ctx, config, trial_id, None)]
    out = []
    for j, (v, s) in enumerate(config[MEMBERS_KEY]):
        member = {SETTING_KEY: v, SEED_KEY: int(s)} if isinstance(v, str) else {LEGACY_VARIANT_KEY: int(v),
                                                                                 LEGACY_SEED_KEY: int(s)}
        out.append(_member(ctx, member, member_id(trial_id, j), j))
    return out


def member_config(ctx: TrialContext, member: TrialMember, **flat: Any) -> TrainConfig:
    """The TrainConfig ``member`` trains: its plan's, in its run directory, with its Tune config's
    keys and ``flat`` (what the trial process decides: threads, device) set: one ``replace``."""
    return member.plan.config.replace(**{**dict(member.extra), "run.out_dir": member.out_dir(ctx), **flat})


# -- cohorts ----------------------------------------------------------------------------------
def cohorts_apply(spec: StudySpec, shape: str) -> bool:
    """Cohorts are used for grid studies without early stopping, in inline trials, unless disabled."""
    return spec.cohort_size > 1 and spec.search == "grid" and spec.scheduler == "none" and shape == "inline" \
        and spec.num_samples == 1


def plan_cohorts(configs: Sequence[tuple[Any, int, TrainConfig]], slots: int, max_size: int) -> list[list[list[Any]]]:
    """Group ``(setting, seed, config)`` triples into cohorts of compatible configurations
    (:func:`segdistill.cohort.cohort_signature`: same data, student, schedule, seed and teacher).

    The size is ``min(max_size, ceil(len(configs) / slots))`` so that a study never has fewer trials
    than the cluster runs at once; each compatible group is split into near-equal parts of at most
    that size. Returns, per cohort, its members as ``[setting, seed]`` pairs (the Tune config value).
    """
    if not configs:
        return []
    size = max(1, min(max_size, math.ceil(len(configs) / max(1, slots))))
    groups: dict[Any, list[list[Any]]] = defaultdict(list)
    for v, s, cfg in configs:
        groups[cohort_signature(cfg)].append([v, int(s)])
    out: list[list[list[Any]]] = []
    for members in groups.values():
        parts = math.ceil(len(members) / size)
        for k in range(parts):
            out.append(members[k::parts])  # near-equal parts
    return out
