"""The ``MODELS`` registry: one plain dict from architecture name to factory (STYLE.md 3).

Factories are registered by ``@register_model`` in ``segdistill.models.zoo``, the module that
defines them; ``segdistill.models`` imports that module explicitly. There are no string scopes,
parent registries or plugin discovery.
"""

from __future__ import annotations

from typing import Callable, Protocol

from torch import nn


class ModelFactory(Protocol):
    """Builds a randomly initialised segmentation network (see ``zoo.py``)."""

    def __call__(self, num_classes: int, *, output_stride: int, aux: bool) -> nn.Module: ...


MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory to ``MODELS`` under ``name``; a duplicate name raises ValueError."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered (by {MODELS[name]!r})")
        MODELS[name] = factory
        return factory

    return decorator


def get_factory(arch: str) -> ModelFactory:
    """The factory registered as ``arch``; an unknown name raises ValueError listing known names."""
    try:
        return MODELS[arch]
    except KeyError:
        known = ", ".join(sorted(MODELS)) or "(none registered)"
        raise ValueError(f"unknown model arch {arch!r}; known models: {known}") from None
