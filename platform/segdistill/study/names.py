"""Readable names for a study's settings and trials, and the Tune parameter spaces that carry them.

A study's settings are its variants (flat override dicts, :mod:`segdistill.study.spec`). Each gets a
*setting name*: its ``tag.setting`` when the experiment script gave one (``"beta=0.3"``, ``"cwd"``),
else the values it sets for the keys that differ between the study's variants (``"method=hwd
beta=0.3"``). Names are unique within a study (colliding ones get the differing keys appended).

Tune's parameter space holds these names and the swept flat config keys themselves, not indices
into a list on the driver, so everything Tune and Ray show about a trial is readable:

- grid: ``{"setting": "beta=0.3", "run.seed": 1, "distill.beta": 0.3, "distill.weighting": "smooth"}``
  (``setting`` and ``run.seed`` are grid axes; each swept key is resolved from the setting with
  ``tune.sample_from``, so Tune's status table, result files, trial directories and TensorBoard's
  hparams show ``distill.beta=0.3``);
- cohort trials: ``{"members": [["beta=0.1", 0], ["beta=0.9", 0]], "cohort": "beta=0.1, beta=0.9",
  "run.seed": 0}``;
- Optuna: ``{"setting": "method=hwd", "run.seed": 0}`` plus the searched keys Optuna suggests.

Trials are named ``"<setting> seed <s> (<trial id>)"`` (:func:`trial_name`); the trial itself looks
its planned configuration up by setting and seed (:func:`segdistill.study.plan.trial_members`), which
keeps ``--resume`` working: Tune's experiment state stores these configs, and the names depend only
on the study's spec.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

from ray import tune
from ray.tune import Callback

from .spec import TAG_PREFIX, safe_name

SETTING_KEY = "setting"
SEED_KEY = "run.seed"
COHORT_KEY = "cohort"
MEMBERS_KEY = "members"
LEGACY_VARIANT_KEY = "variant"  # Tune configs written before setting names: an index into the variants
LEGACY_SEED_KEY = "seed"

# Keys whose values are where things are, not what a setting is: never part of a name or of Tune's
# visible space (a trial still gets them from its variant).
PATH_KEYS = frozenset({"distill.teacher_checkpoint", "run.out_dir", "data.root", "model.pretrained",
                       "run.teacher_cache"})


def format_value(value: Any) -> str:
    """``0.3`` -> ``"0.3"``, ``1e-06`` -> ``"1e-06"``, ``True`` -> ``"true"``, strings as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


FIRST_KEYS = ("data.name", "model.arch", "distill.method")  # named first, in this order; then alphabetical


def _key_order(key: str) -> tuple[int, str]:
    return (FIRST_KEYS.index(key) if key in FIRST_KEYS else len(FIRST_KEYS), key)


def swept_keys(variants: Sequence[Mapping[str, Any]], base_flat: Mapping[str, Any]) -> list[str]:
    """Config keys (no tags, no paths) whose effective value differs between ``variants``: dataset,
    student and method first, the others alphabetically."""
    keys = sorted({k for v in variants for k in v if not k.startswith(TAG_PREFIX) and k not in PATH_KEYS},
                  key=_key_order)
    return [k for k in keys if len({_hashable(v.get(k, base_flat.get(k))) for v in variants}) > 1]


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """``distill.beta`` -> ``beta`` unless two keys share the field name (then the full key)."""
    fields = [k.split(".", 1)[-1] for k in keys]
    return {k: (f if fields.count(f) == 1 else k) for k, f in zip(keys, fields)}


def _auto_name(variant: Mapping[str, Any], keys: Sequence[str]) -> str:
    short = _short_keys(keys)
    parts = [f"{short[k]}={format_value(variant[k])}" for k in keys if k in variant]
    return " ".join(parts)


def setting_names(variants: Sequence[Mapping[str, Any]], base_flat: Mapping[str, Any],
                  explicit: Sequence[str | None] | None = None) -> list[str]:
    """One unique, readable name per variant (see the module docstring); ``explicit[i]``, when given
    and not None, is variant i's preferred name (before de-duplication)."""
    swept = swept_keys(variants, base_flat)
    own = [k for k in sorted({k for v in variants for k in v}, key=_key_order)
           if not k.startswith(TAG_PREFIX) and k not in PATH_KEYS]
    names = []
    for i, v in enumerate(variants):
        name = (explicit[i] if explicit is not None and i < len(explicit) else None) or v.get(TAG_PREFIX + "setting")
        if not name:  # the keys this variant sets among those that vary; a lone variant: all it sets
            name = _auto_name(v, swept) if len(variants) > 1 else _auto_name(v, own)
        names.append(str(name) or "base")
    # colliding names: append the swept keys that differ among the colliding variants, then a counter
    for attempt in range(2):
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n, []).append(i)
        for n, idx in groups.items():
            if len(idx) < 2:
                continue
            if attempt == 0:
                members = [variants[i] for i in idx]
                keys = swept_keys(members, base_flat) or own
                for i in idx:
                    extra = " ".join(f"{k}={format_value(variants[i].get(k, base_flat.get(k)))}" for k in keys)
                    names[i] = f"{n} {extra}".strip()
            else:
                for j, i in enumerate(idx):
                    names[i] = f"{n} #{j + 1}"
    return names


def member_label(setting: str, seed: int) -> str:
    """``"beta=0.3 seed 1"``: one configuration of a study (a setting run with one seed)."""
    return f"{setting} seed {int(seed)}"


# -- Tune parameter spaces ----------------------------------------------------------------------
def _resolved(table: Mapping[str, Any], key: str, config: Mapping[str, Any]) -> Any:
    """``tune.sample_from`` resolver: the value of ``key`` for the trial's setting (``config`` is the
    trial's config with its grid values; module level and used through functools.partial, so Tune can
    pickle the space into its experiment state)."""
    return table[config[SETTING_KEY]][key]


def grid_space(variants: Sequence[Mapping[str, Any]], names: Sequence[str], seeds: Sequence[int],
               base_flat: Mapping[str, Any], *, with_seed: bool = True) -> dict[str, Any]:
    """Grid over ``setting`` x ``run.seed``, with each swept key resolved from the setting."""
    keys = swept_keys(variants, base_flat)
    table = {n: {k: v.get(k, base_flat.get(k)) for k in keys} for n, v in zip(names, variants)}
    space: dict[str, Any] = {SETTING_KEY: tune.grid_search(list(names))}
    if with_seed:
        space[SEED_KEY] = tune.grid_search([int(s) for s in seeds])
    for k in keys:
        space[k] = tune.sample_from(functools.partial(_resolved, table, k))
    return space


def _cohort_value(key: str, config: Mapping[str, Any]) -> Any:
    members = config[MEMBERS_KEY]
    if key == SEED_KEY:
        return int(members[0][1])
    return ", ".join(str(name) for name, _ in members)


def cohort_space(cohorts: Sequence[Sequence[Sequence[Any]]]) -> dict[str, Any]:
    """Grid over cohorts, each a list of ``[setting, seed]`` members (one seed per cohort)."""
    return {MEMBERS_KEY: tune.grid_search([[[str(n), int(s)] for n, s in c] for c in cohorts]),
            COHORT_KEY: tune.sample_from(functools.partial(_cohort_value, COHORT_KEY)),
            SEED_KEY: tune.sample_from(functools.partial(_cohort_value, SEED_KEY))}


def fixed_space(name: str, seed: int) -> dict[str, Any]:
    """One setting and seed (Optuna searches add their suggested keys to it)."""
    return {SETTING_KEY: name, SEED_KEY: int(seed)}


# -- trial names -------------------------------------------------------------------------------
def config_label(config: Mapping[str, Any], searched: Sequence[str] = ()) -> str:
    """What a Tune trial config is, in words: ``"beta=0.3 seed 1"``; a cohort trial ``"cohort
    beta=0.1, beta=0.9 seed 0"``; a search trial its setting and the values of the ``searched`` keys
    (``"method=hwd seed 0: mu=0.41 alpha=1.2"``)."""
    if MEMBERS_KEY in config:
        members = config[MEMBERS_KEY]
        if members and isinstance(members[0][0], str):
            return f"cohort {', '.join(str(n) for n, _ in members)} seed {int(members[0][1])}"
        return f"cohort of {len(members)}"
    if SETTING_KEY not in config:
        if LEGACY_VARIANT_KEY in config:
            return f"variant {config[LEGACY_VARIANT_KEY]} seed {config.get(LEGACY_SEED_KEY, 0)}"
        return "trial"
    label = member_label(config[SETTING_KEY], config.get(SEED_KEY, 0))
    keys = [k for k in searched if k in config]
    short = _short_keys(keys)
    # values the setting's name already says (a define-by-run space's fixed "method=hwd") are not repeated
    parts = [p for p in (f"{short[k]}={_fmt_search(config[k])}" for k in keys) if p not in label.split()]
    return label + (": " + " ".join(parts) if parts else "")


def _fmt_search(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else format_value(value)


def searched_keys(trial: Any) -> list[str]:
    """Flat keys a search algorithm (Optuna) suggested for ``trial``; none for grid trials, whose
    flat keys are resolved from their setting (the grid's ``evaluated_params`` hold ``setting``)."""
    params = dict(getattr(trial, "evaluated_params", None) or {})
    if SETTING_KEY in params or MEMBERS_KEY in params:
        return []
    return [k for k in params if "." in k and k != SEED_KEY]


def trial_label(trial: Any) -> str:
    """``config_label`` of a Tune ``Trial``."""
    return config_label(dict(getattr(trial, "config", None) or {}), searched_keys(trial))


def trial_name(trial: Any) -> str:
    """Tune ``trial_name_creator``: ``"beta=0.3 seed 1 (8452e_00003)"``."""
    return f"{trial_label(trial)} ({trial.trial_id})"


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, str) and len(value) > 200)


class NamesCallback(Callback):
    """Tune callback: a starting grid trial's ``evaluated_params`` (what Tune's status table, experiment
    state and TensorBoard's hparams show) get the flat config keys resolved from its setting
    (``distill.beta``), which Tune leaves out because they are ``sample_from`` values, not grid axes."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = getattr(trial, "evaluated_params", None)
        if params is None or not (SETTING_KEY in params or MEMBERS_KEY in params):
            return  # a search trial: its evaluated_params are the searched keys already
        for key, value in dict(trial.config or {}).items():
            named = key in (SETTING_KEY, SEED_KEY, COHORT_KEY) or "." in key
            if named and key not in params and key not in PATH_KEYS and _scalar(value):
                params[key] = value


def trial_dirname(trial: Any) -> str:
    """Tune ``trial_dirname_creator``: ``"8452e_00003_beta=0.3_seed_1"`` (file-system safe, short)."""
    return f"{trial.trial_id}_{safe_name(trial_label(trial))}"[:120]
