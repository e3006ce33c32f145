"""Ray Train + Tune + Optuna orchestration: the only part of segdistill that imports Ray.

``StudySpec`` describes a study (base config, variants/grid, seeds, search, scheduler, trial shape,
resources, teacher recipe); ``run_study`` executes it on local Ray or a cluster and returns the
study's ``trials`` table (``segdistill.results``). ``presets`` and ``cli_args`` hold the plumbing the
``experiments/*.py`` scripts share.
"""

from .preflight import PreflightError, preflight_spec
from .spec import Resources, StudySpec, TeacherRecipe, recipe_hash
from .zoo import TeacherZoo

__all__ = ["Resources", "StudySpec", "TeacherRecipe", "TeacherZoo", "recipe_hash", "run_study",
           "StudyExistsError", "DashboardMissingError", "PreflightError", "preflight_spec"]


def __getattr__(name: str):  # Ray is imported only when a study actually runs
    if name in ("run_study", "StudyExistsError", "DashboardMissingError"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
