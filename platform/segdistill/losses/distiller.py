"""The base class of every distiller: a distillation method as a visible ``nn.Module``.

A distiller turns (student output, teacher output, labels) into named, weighted loss terms
(:meth:`Distiller.terms`); their sum is the method loss ``L_distill`` and ``alpha`` is applied by the
training step, not here (STYLE.md 1, 8): ``loss = CE + aux + alpha * L_distill``. Each method's
internal weights are fields of its parameter dataclass (``distill.*`` flat keys) defaulting to the
reference recipe (docs/REFERENCE.md "Comparison methods"); ``reference_alpha`` is the
``distill.alpha`` that reproduces the reference (3 for CWD/HWD, 1 for the rest, whose reference
code weights every term itself). Each method's file holds its maths (pure functions), its
parameters and its distiller; :mod:`.registry` names them.

Trainable parts - projection heads, MGD's generator, CIRKD's memory queues (buffers), the
SKD/IFVD critic with its own optimiser - are sub-modules of the distiller, so they are visible,
move with ``.to()``, and are saved/restored by ``state_dict()`` (the trainer's checkpoints).
:meth:`Distiller.student_parameters` are optimised with the student; the critic is stepped by
:meth:`Distiller.after_step` after the student's optimiser step.

Feature taps (STYLE.md 9): a method that needs features names one tap (``distill.feature``, or the
method's reference tap when that is '') and reads its channel counts from the models'
``feature_channels`` at construction, so any teacher/student pair works (the reference code
hard-codes 128/256 widths). A missing tap fails at construction, not mid-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..parallel import gather_batch, world_size
from .params import MethodParams


class DistillSettings(Protocol):
    """What a distiller reads of its configuration (``segdistill.config.DistillConfig``; losses do
    not import the config): the method's name, teacher architecture and parameters."""

    method: str
    teacher_arch: str
    params: Any


class Distiller(nn.Module):
    """Base class. ``terms(s_logits, t_logits, labels, s_features, t_features) -> {name: scalar}``;
    ``forward`` returns their sum.

    Class attributes: ``params_class`` (the method's parameter dataclass, whose instance
    ``DistillConfig.params`` holds and the distiller reads as ``self.params``), ``reference_alpha``
    (the reference recipe's ``distill.alpha``), ``feature_tap`` (the reference feature tap, '' =
    logits only), ``zero_at_equality`` (names of the terms that vanish when the student is the
    teacher).
    Constructor: the method's settings (a ``DistillConfig``), ``num_classes`` and the models'
    ``feature_channels`` dicts (needed only by feature-based methods; ``build_distiller`` reads them
    from the models).
    """

    name: ClassVar[str] = ""
    params_class: ClassVar[type[MethodParams]] = MethodParams
    reference_alpha: ClassVar[float] = 1.0
    feature_tap: ClassVar[str] = ""
    zero_at_equality: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DistillSettings, *, ignore_index: int = 255, num_classes: int = 0,
                 student_channels: Mapping[str, int] | None = None,
                 teacher_channels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.params = cfg.params
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.tap = (self.params.feature or self.feature_tap) if self.feature_tap else ""
        self.required_features: tuple[str, ...] = (self.tap,) if self.tap else ()
        self.student_width = self.teacher_width = 0
        if self.tap:
            if student_channels is None or teacher_channels is None or num_classes < 2:
                raise ValueError(f"method {self.name!r} taps the {self.tap!r} feature: build it with the models "
                                 f"(build_distiller(cfg, student=..., teacher=...)) so channel counts are known")
            self.check_features(frozenset(student_channels), "student")
            self.check_features(frozenset(teacher_channels), "teacher")
            self.student_width, self.teacher_width = int(student_channels[self.tap]), int(teacher_channels[self.tap])

    def check_features(self, available: set[str] | frozenset[str], model: str = "student") -> None:
        missing = [f for f in self.required_features if f not in available]
        if missing:
            raise ValueError(f"method {self.name!r} needs features {missing}; the {model} provides {sorted(available)} "
                             f"(set distill.feature to one of them)")

    def tapped(self, s_features: Mapping[str, Tensor] | None, t_features: Mapping[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        """The (student, teacher) maps of this method's feature tap; a clear error when absent."""
        for who, feats in (("student", s_features), ("teacher", t_features)):
            if not feats or self.tap not in feats:
                have = sorted(feats) if feats else []
                raise ValueError(f"method {self.name!r} needs the {who}'s {self.tap!r} feature; got {have}")
        return s_features[self.tap], t_features[self.tap]  # type: ignore[index]

    def terms(self, s_logits: Tensor, t_logits: Tensor, labels: Tensor, s_features: Mapping[str, Tensor] | None = None,
              t_features: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def coupled(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The tensors a batch-coupled term (CIRKD's mini-batch pairs, DIST's intra-class relation)
        sees: this worker's own images (``distill.batch_coupling = 'worker'``, the reference: each
        GPU's 2 images) or every worker's, gathered differentiably (``'global'``; see
        :mod:`segdistill.parallel`). One process: the whole batch either way."""
        if self.params.batch_coupling == "global" and world_size() > 1:
            return tuple(gather_batch(t) for t in tensors)
        return tensors

    def forward(self, s_logits: Tensor, t_logits: Tensor, labels: Tensor, s_features: Mapping[str, Tensor] | None = None,
                t_features: Mapping[str, Tensor] | None = None) -> Tensor:
        parts = self.terms(s_logits, t_logits, labels, s_features, t_features)
        return torch.stack([v.float() for v in parts.values()]).sum()

    def student_parameters(self) -> list[nn.Parameter]:
        """Parameters optimised together with the student (everything but an adversarial critic)."""
        return [p for n, p in self.named_parameters() if not n.startswith("adversary.")]

    def after_step(self, lr_scale: float = 1.0) -> dict[str, Tensor]:
        """Updates that follow the student's optimiser step (the critic's step); detached terms."""
        return {}

    def sync_gradients_across_ranks(self) -> None:
        """Average every parameter's gradient over the ``torch.distributed`` ranks as soon as it is
        accumulated (what DDP does for the student): projection heads, generators and the critic stay
        identical on every rank. ``build_distiller`` calls this when a process group with more
        than one rank is initialised. (Buffers are per rank: BatchNorm statistics of the adapters
        and CIRKD's queues, which the reference fills with an all-gather, hold each rank's own
        samples; checkpoints keep rank 0's.)"""
        world = dist.get_world_size()

        def average(p: Tensor) -> None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)

        for p in self.parameters():
            p.register_post_accumulate_grad_hook(average)

    def describe(self) -> dict[str, float]:
        """Facts worth logging: trainable parameters with the student, bytes of state buffers."""
        return {"trainable_params": float(sum(p.numel() for p in self.student_parameters())),
                "buffer_bytes": float(sum(b.numel() * b.element_size() for b in self.buffers()))}


__all__ = ["DistillSettings", "Distiller"]
