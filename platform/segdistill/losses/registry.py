"""The registry of distillation methods: name -> distiller class (which names its parameter
dataclass, ``params_class``, and its reference weight, ``reference_alpha``).

Adding a method: its file (the loss maths, a frozen parameter dataclass validating its fields, a
:class:`~.distiller.Distiller` subclass naming both) and one ``register_method`` line below.
:mod:`segdistill.config` reads this registry (one way: losses never import the config) for the
method names, each method's parameter dataclass (``DistillConfig.params``, whose fields are the
``distill.*`` flat keys) and the reference ``distill.alpha``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..models import build_model
from .cirkd import CIRKDDistiller
from .cwd import CWDDistiller, KDDistiller
from .dist import DISTDistiller
from .distiller import Distiller, DistillSettings
from .hwd import HWDDistiller
from .ifvd import IFVDDistiller
from .mgd import MGDDistiller
from .params import MethodParams
from .skd import SKDDistiller

NO_METHOD = "none"  # CE-only training (a baseline student or a teacher): no distiller, no parameters

METHODS: dict[str, type[Distiller]] = {}


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator adding a distiller to ``METHODS``; a duplicate name is an error."""

    def add(cls: type[Distiller]) -> type[Distiller]:
        if name in METHODS:
            raise ValueError(f"distillation method {name!r} is already registered ({METHODS[name].__name__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


register_method("kd")(KDDistiller)
register_method("cwd")(CWDDistiller)
register_method("hwd")(HWDDistiller)
register_method("dist")(DISTDistiller)
register_method("skd")(SKDDistiller)
register_method("ifvd")(IFVDDistiller)
register_method("cirkd")(CIRKDDistiller)
register_method("mgd")(MGDDistiller)


def params_class(method: str) -> type[MethodParams]:
    """The parameter dataclass of ``method`` (the empty :class:`MethodParams` for 'none')."""
    if method == NO_METHOD:
        return MethodParams
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; known: {sorted(METHODS)} or {NO_METHOD!r}")
    return METHODS[method].params_class


def _teacher_channels(arch: str, num_classes: int) -> dict[str, int]:
    """The teacher architecture's feature widths, from a weightless build on the meta device."""
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    return dict(model.feature_channels)


def build_distiller(cfg: DistillSettings, *, ignore_index: int = 255, student: nn.Module | None = None,
                    teacher: nn.Module | None = None) -> Distiller | None:
    """The distiller for ``cfg.method``, or None for 'none' (CE-only training).

    Feature-based methods need ``student`` (a ``SegmentationModel``: ``num_classes`` and
    ``feature_channels``); the teacher's widths come from ``teacher`` or, when it is not given,
    from ``cfg.teacher_arch`` built on the meta device (no weights, no memory).
    """
    if cfg.method == NO_METHOD:
        return None
    if cfg.method not in METHODS:
        raise ValueError(f"unknown distillation method {cfg.method!r}; known: {sorted(METHODS)} or 'none'")
    cls = METHODS[cfg.method]
    kw: dict = {"ignore_index": ignore_index}
    if student is not None:
        kw["num_classes"] = int(student.num_classes)  # type: ignore[arg-type]
        if cls.feature_tap:
            kw["student_channels"] = dict(student.feature_channels)  # type: ignore[arg-type]
            if teacher is not None:
                kw["teacher_channels"] = dict(teacher.feature_channels)  # type: ignore[arg-type]
            elif cfg.teacher_arch:
                kw["teacher_channels"] = _teacher_channels(cfg.teacher_arch, kw["num_classes"])
    distiller = cls(cfg, **kw)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        distiller.sync_gradients_across_ranks()
    return distiller


def reference_alpha(method: str) -> float:
    """The ``distill.alpha`` of the reference recipe for ``method`` (3 for CWD/HWD, else 1)."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method].reference_alpha


__all__ = ["METHODS", "NO_METHOD", "build_distiller", "params_class", "reference_alpha", "register_method"]
