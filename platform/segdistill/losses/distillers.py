"""Distillation methods as visible ``nn.Module`` s, and the ``METHODS`` registry.

A distiller turns (student output, teacher output, labels) into named, weighted loss terms
(:meth:`Distiller.terms`); their sum is the method loss ``L_distill`` and ``alpha`` is applied by the
training step, not here (STYLE.md 1, 8): ``loss = CE + aux + alpha * L_distill``. Each method's
internal weights are config fields (``distill.*``) defaulting to the reference recipe (docs/REFERENCE.md "Comparison methods");
``reference_alpha`` is the ``distill.alpha`` that reproduces the reference (3 for CWD/HWD, 1 for the
rest, whose reference code weights every term itself). The maths are pure functions in the
per-method modules (``skd``, ``ifvd``, ``cirkd``, ``mgd``, ``dist``, ``adversarial``).

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

import logging
from typing import Callable, ClassVar, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import ConfigError, DistillConfig
from ..parallel import gather_batch, world_size
from .adversarial import AdversarialCritic
from .cirkd import MemoryBank, ProjectionHead, format_bytes, memory_bytes, memory_contrast_terms, minibatch_pair_loss
from .cwd import cwd_loss, kd_loss
from .dist import dist_terms, inter_term, intra_term
from .hwd import hwd_loss
from .ifvd import ifv_loss
from .mgd import MGDGenerator, mgd_loss, random_keep_mask
from .skd import match_size, pairwise_similarity_loss

log = logging.getLogger(__name__)

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
    """Base class. ``terms(s_logits, t_logits, labels, s_features, t_features) -> {name: scalar}``;
    ``forward`` returns their sum.

    Class attributes: ``reference_alpha`` (the reference recipe's ``distill.alpha``),
    ``feature_tap`` (the reference feature tap, '' = logits only), ``zero_at_equality`` (names of
    the terms that vanish when the student is the teacher).
    Constructor: ``num_classes`` and the models' ``feature_channels`` dicts (needed only by
    feature-based methods; :func:`build_distiller` reads them from the models).
    """

    name: ClassVar[str] = ""
    reference_alpha: ClassVar[float] = 1.0
    feature_tap: ClassVar[str] = ""
    zero_at_equality: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DistillConfig, *, ignore_index: int = 255, num_classes: int = 0,
                 student_channels: Mapping[str, int] | None = None,
                 teacher_channels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.tap = (cfg.feature or self.feature_tap) if self.feature_tap else ""
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
        if self.cfg.batch_coupling == "global" and world_size() > 1:
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
        identical on every rank. :func:`build_distiller` calls this when a process group with more
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


# ------------------------------------------------------------------------------------------ logits only
@register_method("kd")
class KDDistiller(Distiller):
    """Pixel-wise KD (Hinton et al.): per-pixel class distribution at ``distill.kd_temperature``
    (reference T = 1, weight 1: ``distill.alpha = 1``)."""

    zero_at_equality = ("kd",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return {"kd": kd_loss(s_logits, t_logits, temperature=self.cfg.kd_temperature)}


@register_method("cwd")
class CWDDistiller(Distiller):
    """Channel-wise distillation (Shu et al., ICCV 2021), paper Eq. (3): channel-wise KL of the
    spatial softmax at ``distill.tau`` (reference tau 4, weight 3 = ``distill.alpha``)."""

    reference_alpha = 3.0
    zero_at_equality = ("cwd",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return {"cwd": cwd_loss(s_logits, t_logits, tau=self.cfg.tau)}


@register_method("hwd")
class HWDDistiller(Distiller):
    """Holistic weighted distillation, paper Eq. (4)-(7) (alpha 3, tau 4, beta 0.1; mu per dataset)."""

    reference_alpha = 3.0
    zero_at_equality = ("hwd",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.cfg
        return {"hwd": hwd_loss(
            s_logits, t_logits, labels, tau=c.tau, mu=c.mu, sigma=c.sigma, beta=c.beta,
            pixel_correction=c.pixel_correction, weighting=c.weighting, tau_prime=c.tau_prime,
            ignore_index=self.ignore_index,
        )}


@register_method("dist")
class DISTDistiller(Distiller):
    """DIST (Huang et al., 2022), segmentation form: ``1 - Pearson`` of raw logits between student
    and teacher, inter-class (per pixel, over classes; ``distill.dist_inter_weight``, reference 1)
    and intra-class (per class, over the batch's pixels - the worker's or, with
    ``distill.batch_coupling = 'global'``, every worker's; ``distill.dist_intra_weight``, reference
    1). No softmax or temperature (docs/REFERENCE.md). Reference ``distill.alpha = 1``."""

    zero_at_equality = ("inter", "intra")

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        if self.cfg.batch_coupling == "global" and world_size() > 1:  # intra over every worker's pixels
            inter, intra = inter_term(s_logits, t_logits), intra_term(*self.coupled(s_logits, t_logits.detach()))
        else:
            inter, intra = dist_terms(s_logits, t_logits)
        return {"inter": self.cfg.dist_inter_weight * inter, "intra": self.cfg.dist_intra_weight * intra}


# ------------------------------------------------------------------------------------------ with features
class _AdversarialMixin:
    """Adds the SKD/IFVD critic (``self.adversary``) and its student term and step."""

    adversary: AdversarialCritic
    cfg: DistillConfig

    def _make_adversary(self, num_classes: int) -> None:
        c = self.cfg
        self.adversary = AdversarialCritic(num_classes, d_weight=c.adv_d_weight, gp_weight=c.adv_gp_weight, lr=c.adv_lr,
                                           loss=c.adv_loss)

    def _adversarial_term(self, s_logits: Tensor, t_logits: Tensor) -> Tensor:
        return self.cfg.adv_g_weight * self.adversary.generator_loss(s_logits, t_logits)

    def after_step(self, lr_scale: float = 1.0) -> dict[str, Tensor]:
        return self.adversary.step(lr_scale)


@register_method("skd")
class SKDDistiller(_AdversarialMixin, Distiller):
    """Structured KD (Liu et al., TPAMI 2020). Transfers the per-pixel class distribution (pixel KD,
    ``distill.kd_weight``, reference 1), the pair-wise cosine similarity of max-pooled features
    (window ``distill.skd_pair_pool`` 2, weight ``distill.skd_pair_weight`` 10; tap ``"head"`` = the
    reference's feature after the ASPP/PSP block) and the holistic look of the score map through a
    spectral-norm critic on the logits (``distill.adv_loss`` 'hinge' as the reference scripts, or
    'wgan-gp' with gradient penalty ``distill.adv_gp_weight`` 10; student term ``distill.adv_g_weight``
    1e-3; critic ``distill.adv_d_weight`` 0.1, Adam lr ``distill.adv_lr`` 4e-4, its own optimiser).
    Reference ``distill.alpha = 1``. Critic deviations: see :mod:`.adversarial`."""

    feature_tap = "head"
    zero_at_equality = ("kd", "pair")

    def __init__(self, cfg: DistillConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        self._make_adversary(self.num_classes)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.cfg
        fs, ft = self.tapped(s_features, t_features)
        return {"kd": c.kd_weight * kd_loss(s_logits, t_logits, temperature=c.kd_temperature),
                "pair": c.skd_pair_weight * pairwise_similarity_loss(fs, ft, pool=c.skd_pair_pool),
                "adv_g": self._adversarial_term(s_logits, t_logits)}


@register_method("ifvd")
class IFVDDistiller(_AdversarialMixin, Distiller):
    """Intra-class feature variation distillation (Wang et al., ECCV 2020). Transfers pixel KD
    (``distill.kd_weight``, 1), the map of cosine similarities between each pixel's feature and its
    class prototype (``distill.ifvd_weight``, 20 per docs/REFERENCE.md; tap ``"head"``), and the same
    adversarial term as SKD. Reference ``distill.alpha = 1``."""

    feature_tap = "head"
    zero_at_equality = ("kd", "ifv")

    def __init__(self, cfg: DistillConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        self._make_adversary(self.num_classes)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.cfg
        fs, ft = self.tapped(s_features, t_features)
        return {"kd": c.kd_weight * kd_loss(s_logits, t_logits, temperature=c.kd_temperature),
                "ifv": c.ifvd_weight * ifv_loss(fs, ft, labels, num_classes=self.num_classes,
                                                ignore_index=self.ignore_index),
                "adv_g": self._adversarial_term(s_logits, t_logits)}


@register_method("cirkd")
class CIRKDDistiller(Distiller):
    """Cross-image relational KD (Yang et al., CVPR 2022). Transfers pixel KD (``distill.kd_weight``,
    1), mini-batch cross-image pixel-pair relations (``distill.cirkd_pair_weight`` 1, temperature
    ``cirkd_pair_tau`` 0.1, unpooled: ``cirkd_pair_pool`` 1), and memory-bank pixel / region contrast
    (``cirkd_pixel_weight`` 0.1, ``cirkd_region_weight`` 0.1, temperatures ``cirkd_contrast_tau`` 0.1 /
    ``cirkd_contrast_kd_tau`` 1; ``cirkd_pixel_contrast`` / ``cirkd_region_contrast`` negatives per class,
    0 = the reference's ``4096 // C + 1`` / ``1024 // C + 1``) through a projection head (student width
    -> teacher width, read from the models) and per-class queues sized by ``cirkd_pixel_memory`` /
    ``cirkd_region_memory``, refused above ``cirkd_max_memory_mb``. Tap ``"head"``. Reference
    ``distill.alpha = 1``. Deviations (pixel sampling from the class mask, not raw positions; memory
    sizing): see :mod:`.cirkd`."""

    feature_tap = "head"
    zero_at_equality = ("kd", "pair")

    def __init__(self, cfg: DistillConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        need = memory_bytes(self.num_classes, cfg.cirkd_pixel_memory, cfg.cirkd_region_memory, self.teacher_width)
        self.memory_footprint = need
        if need > cfg.cirkd_max_memory_mb * 2**20:
            raise ConfigError(
                f"distill.cirkd_pixel_memory={cfg.cirkd_pixel_memory} / distill.cirkd_region_memory="
                f"{cfg.cirkd_region_memory} per class need {format_bytes(need)} of queues ({self.num_classes} classes x "
                f"{self.teacher_width}-d), above distill.cirkd_max_memory_mb={cfg.cirkd_max_memory_mb:g}; "
                f"shrink the memories or raise the cap")
        # negatives sampled per class per step: the reference passes 4096 // C + 1 and 1024 // C + 1
        # (train_cirkd.py:170-171); a positive config value overrides
        self.pixel_contrast = cfg.cirkd_pixel_contrast or reference_contrast_size(4096, self.num_classes)
        self.region_contrast = cfg.cirkd_region_contrast or reference_contrast_size(1024, self.num_classes)
        self.projector = ProjectionHead(self.student_width, self.teacher_width)
        self.memory = MemoryBank(self.num_classes, self.teacher_width, cfg.cirkd_pixel_memory, cfg.cirkd_region_memory,
                                 ignore_index=self.ignore_index)
        log.info("cirkd memory bank: %d classes x (%d pixel + %d region) x %d-d = %s", self.num_classes,
                 cfg.cirkd_pixel_memory, cfg.cirkd_region_memory, self.teacher_width, format_bytes(need))

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.cfg
        fs, ft = self.tapped(s_features, t_features)
        pix, reg = memory_contrast_terms(
            self.projector(fs), ft, labels, self.memory, pixel_contrast=self.pixel_contrast,
            region_contrast=self.region_contrast, tau=c.cirkd_contrast_tau, kd_tau=c.cirkd_contrast_kd_tau,
            anchors=c.cirkd_anchors)
        return {"kd": c.kd_weight * kd_loss(s_logits, t_logits, temperature=c.kd_temperature),
                "pair": c.cirkd_pair_weight * minibatch_pair_loss(*self.coupled(fs, ft.detach()), tau=c.cirkd_pair_tau,
                                                                  pool=c.cirkd_pair_pool),
                "memory_pixel": c.cirkd_pixel_weight * pix,
                "memory_region": c.cirkd_region_weight * reg}

    def describe(self) -> dict[str, float]:
        return {**super().describe(), "memory_bytes": float(self.memory_footprint)}


@register_method("mgd")
class MGDDistiller(Distiller):
    """Masked generative distillation (Yang et al., ECCV 2022). Transfers the teacher's feature map
    (tap ``"head"``: the head feature after ASPP/PSP, the reference's ``s_outputs[-1]``,
    train_mgd.py:206; 128 -> 256 channels for R18 -> R101) by generating it from the student's
    randomly masked feature (``distill.mgd_mask_ratio`` 0.75) with an align conv + generator owned
    here; weight ``distill.mgd_weight`` 2e-5 on the summed squared error / B. Reference
    ``distill.alpha = 1``."""

    feature_tap = "head"

    def __init__(self, cfg: DistillConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        self.generator = MGDGenerator(self.student_width, self.teacher_width)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        fs, ft = self.tapped(s_features, t_features)
        fs = match_size(fs, ft)
        b, _, h, w = ft.shape
        keep = random_keep_mask(b, h, w, self.cfg.mgd_mask_ratio, device=ft.device).to(fs.dtype)
        return {"mgd": self.cfg.mgd_weight * mgd_loss(self.generator(fs, keep), ft)}


# ------------------------------------------------------------------------------------------ building
def _teacher_channels(arch: str, num_classes: int) -> dict[str, int]:
    """The teacher architecture's feature widths, from a weightless build on the meta device."""
    from ..models import build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes)
    return dict(model.feature_channels)


def build_distiller(cfg: DistillConfig, *, ignore_index: int = 255, student: nn.Module | None = None,
                    teacher: nn.Module | None = None) -> Distiller | None:
    """The distiller for ``cfg.method``, or None for 'none' (CE-only training).

    Feature-based methods need ``student`` (a ``SegmentationModel``: ``num_classes`` and
    ``feature_channels``); the teacher's widths come from ``teacher`` or, when it is not given,
    from ``cfg.teacher_arch`` built on the meta device (no weights, no memory).
    """
    if cfg.method == "none":
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


def reference_contrast_size(total: int, num_classes: int) -> int:
    """CIRKD's negatives per class: ``total // C + 1`` (train_cirkd.py:170-171 passes 4096 and 1024)."""
    return total // max(num_classes, 1) + 1


def reference_alpha(method: str) -> float:
    """The ``distill.alpha`` of the reference recipe for ``method`` (3 for CWD/HWD, else 1)."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method].reference_alpha


__all__ = ["METHODS", "Distiller", "build_distiller", "reference_alpha", "reference_contrast_size", "register_method"]
