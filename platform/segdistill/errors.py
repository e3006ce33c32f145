"""The configuration error and the checks that raise it, free of torch.

:class:`ConfigError` is raised by the run configuration (:mod:`segdistill.config`) and by each
distillation method's parameter dataclass (``segdistill.losses``), which validate their own
values; it lives here so that neither imports the other for it.
"""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def check_finite(name: str, value: float) -> None:
    """``value`` must be a finite int or float (``name`` is the flat key in the message)."""
    check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


__all__ = ["ConfigError", "check", "check_finite"]
