"""Distillation methods as visible ``nn.Module`` s, and the ``METHODS`` registry.

A distiller turns (student output, teacher output, labels) into one scalar loss; ``alpha`` is applied
by the training step, not here (STYLE.md 1, 8). Methods that need trainable adapters (projection
convs, generators) hold them as sub-modules so the optimiser sees them through ``.parameters()``;
methods that need named features declare them in ``required_features`` and are checked at
construction against the model (STYLE.md 9).
"""

from __future__ import annotations

from typing import Callable, ClassVar

from torch import Tensor, nn

from ..config import DistillConfig
from .cwd import cwd_loss, kd_loss
from .hwd import hwd_loss

METHODS: dict[str, type["Distiller"]] = {}


def register_method(name: str) -> Callable[[type["Distiller"]], type["Distiller"]]:
    """Class decorator adding a distiller to ``METHODS``; a duplicate name is an error."""

    def add(cls: type["Distiller"]) -> type["Distiller"]:
        if name in METHODS:
            raise ValueError(f"distillation method {name!r} is already registered ({METHODS[name].__name__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


class Distiller(nn.Module):
    """Base class. ``forward(s_logits, t_logits, labels, s_features, t_features) -> scalar``."""

    name: ClassVar[str] = ""
    required_features: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DistillConfig, *, ignore_index: int = 255) -> None:
        super().__init__()
        self.cfg = cfg
        self.ignore_index = ignore_index

    def check_features(self, available: set[str] | frozenset[str]) -> None:
        missing = [f for f in self.required_features if f not in available]
        if missing:
            raise ValueError(f"method {self.name!r} needs features {missing}; the model provides {sorted(available)}")

    def forward(self, s_logits: Tensor, t_logits: Tensor, labels: Tensor,
                s_features: dict[str, Tensor] | None = None, t_features: dict[str, Tensor] | None = None) -> Tensor:
        raise NotImplementedError


@register_method("kd")
class KDDistiller(Distiller):
    """Pixel-wise KD at temperature ``cfg.kd_temperature`` (reference code: T = 1)."""

    def forward(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return kd_loss(s_logits, t_logits, temperature=self.cfg.kd_temperature)


@register_method("cwd")
class CWDDistiller(Distiller):
    """Channel-wise distillation, paper Eq. (3), temperature ``cfg.tau``."""

    def forward(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return cwd_loss(s_logits, t_logits, tau=self.cfg.tau)


@register_method("hwd")
class HWDDistiller(Distiller):
    """Holistic weighted distillation, paper Eq. (4)-(7)."""

    def forward(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.cfg
        return hwd_loss(
            s_logits, t_logits, labels, tau=c.tau, mu=c.mu, sigma=c.sigma, beta=c.beta,
            pixel_correction=c.pixel_correction, weighting=c.weighting, tau_prime=c.tau_prime,
            ignore_index=self.ignore_index,
        )


def build_distiller(cfg: DistillConfig, *, ignore_index: int = 255) -> Distiller | None:
    """The distiller for ``cfg.method``, or None for 'none' (CE-only training)."""
    if cfg.method == "none":
        return None
    if cfg.method not in METHODS:
        raise ValueError(f"unknown distillation method {cfg.method!r}; known: {sorted(METHODS)} or 'none'")
    return METHODS[cfg.method](cfg, ignore_index=ignore_index)
