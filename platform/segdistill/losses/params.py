"""The base of every method's parameter dataclass, and the groups several methods share.

Each distillation method owns a frozen dataclass of its parameters next to its loss code
(``HWDParams`` in :mod:`.hwd`, ``CWDParams`` in :mod:`.cwd`, ...) and named by its distiller's
``params_class`` (:mod:`.registry`). Each dataclass validates its own fields in ``__post_init__``, the one place
those values are checked, and raises :class:`~segdistill.errors.ConfigError` naming the flat key
(``distill.<field>``) under which :class:`~segdistill.config.TrainConfig` exposes the field.
Dataclasses that extend another call ``super().__post_init__()`` so every group checks its fields.

Shared groups here: :class:`FeatureTap` (the feature a method reads) and :class:`BatchCoupling`
(which images CIRKD's and DIST's batch-coupled terms relate). The groups tied to one loss live with
it: the pixel-KD term inside SKD, IFVD and CIRKD (:class:`~segdistill.losses.cwd.PixelKD`) and the
adversarial critic of SKD and IFVD (:class:`~segdistill.losses.adversarial.AdversarialParams`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import check, check_finite
from ..models.segmentor import FEATURE_NAMES

BATCH_COUPLINGS = ("worker", "global")


def require_nonnegative(name: str, value: float) -> None:
    """``distill.<name>`` must be a finite number >= 0."""
    check_finite(f"distill.{name}", value)
    check(value >= 0, f"distill.{name} must be >= 0, got {value}")


def require_positive(name: str, value: float) -> None:
    """``distill.<name>`` must be a finite number > 0."""
    check_finite(f"distill.{name}", value)
    check(value > 0, f"distill.{name} must be > 0, got {value}")


@dataclass(frozen=True)
class MethodParams:
    """Base of every method's parameters; on its own, the (empty) parameters of method 'none'."""

    def __post_init__(self) -> None:
        """Nothing to check here; subclasses check their fields and call this."""


@dataclass(frozen=True)
class FeatureTap(MethodParams):
    """``feature``: the feature tap a feature-based method reads ('' = the method's reference tap,
    ``Distiller.feature_tap``; otherwise one of the models' ``FEATURE_NAMES``)."""

    feature: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.feature == "" or self.feature in FEATURE_NAMES,
              f"distill.feature must be '' (the method's reference tap) or one of {FEATURE_NAMES}, got {self.feature!r}")


@dataclass(frozen=True)
class BatchCoupling(MethodParams):
    """``batch_coupling``: the images the batch-coupled terms (CIRKD's mini-batch pairs, DIST's
    intra-class relation) relate under data parallelism: 'worker' (each worker's own images, as the
    reference's 4 GPUs x 2 images) or 'global' (every worker's, gathered differentiably). With one
    worker both are the whole batch."""

    batch_coupling: str = "worker"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.batch_coupling in BATCH_COUPLINGS,
              f"distill.batch_coupling must be one of {BATCH_COUPLINGS}, got {self.batch_coupling!r}")


__all__ = ["BATCH_COUPLINGS", "BatchCoupling", "FeatureTap", "MethodParams", "require_nonnegative",
           "require_positive"]
