"""Channel-wise distillation (CWD; Shu et al., ICCV 2021), paper Eq. (2)-(3), and pixel-wise KD.

Parameters: :class:`CWDParams` (CWD), :class:`KDParams` (the KD method) and :class:`PixelKD` (the
pixel-KD term that SKD, IFVD and CIRKD add to their own, with its weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ._checks import check_logit_pair
from .distiller import Distiller
from .params import MethodParams, require_nonnegative, require_positive


@dataclass(frozen=True)
class CWDParams(MethodParams):
    """CWD's ``tau``: the temperature of the spatial softmax (paper and reference: 4)."""

    tau: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("tau", self.tau)


@dataclass(frozen=True)
class KDParams(MethodParams):
    """Pixel-wise KD's ``kd_temperature`` T (reference 1)."""

    kd_temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("kd_temperature", self.kd_temperature)


@dataclass(frozen=True)
class PixelKD(KDParams):
    """The pixel-KD term inside SKD, IFVD and CIRKD: ``kd_temperature`` and its weight
    ``kd_weight`` (reference 1)."""

    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative("kd_weight", self.kd_weight)


def channel_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Per-image, per-channel KL of the spatial softmax maps (Eq. 2-3 without the weights).

    Args:
        student_logits, teacher_logits: (B, C, h, w).
    Returns:
        (B, C) float32: ``sum_i pT_ci * log(pT_ci / pS_ci)`` with ``p = softmax_i(z / tau)``.
    """
    b, c = student_logits.shape[:2]
    log_ps = F.log_softmax(student_logits.float().reshape(b, c, -1) / tau, dim=-1)  # (B, C, hw)
    log_pt = F.log_softmax(teacher_logits.float().reshape(b, c, -1) / tau, dim=-1)  # (B, C, hw)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (B, C)


def cwd_loss(student_logits: Tensor, teacher_logits: Tensor, *, tau: float = 4.0) -> Tensor:
    """CWD loss, paper Eq. (3): ``tau^2 / C * sum_c KL_c``, averaged over the batch.

    Args:
        student_logits: (B, C, h, w) at the model's output resolution.
        teacher_logits: (B, C, h, w), same shape; no gradient flows into it.
        tau: activation temperature (paper: 4).
    Returns:
        scalar float32 tensor.
    """
    check_logit_pair(student_logits, teacher_logits)
    CWDParams(tau=tau)  # validates tau
    kl = channel_kl(student_logits, teacher_logits.detach(), tau)  # (B, C)
    b, c = kl.shape
    return kl.sum() * (tau * tau) / (b * c)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Pixel-wise KD (Hinton et al.): KL of the per-pixel class distributions at temperature T,
    times T^2, averaged over all B*h*w positions (the reference code's ``batchmean`` over pixels).

    Args:
        student_logits, teacher_logits: (B, C, h, w).
    Returns:
        scalar float32 tensor.
    """
    check_logit_pair(student_logits, teacher_logits)
    KDParams(kd_temperature=temperature)  # validates the temperature
    t = temperature
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)  # (B, C, h, w)
    log_pt = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (B, h, w)
    return kl.mean() * (t * t)


class KDDistiller(Distiller):
    """Pixel-wise KD (Hinton et al.): per-pixel class distribution at ``distill.kd_temperature``
    (reference T = 1, weight 1: ``distill.alpha = 1``)."""

    params_class = KDParams
    zero_at_equality = ("kd",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return {"kd": kd_loss(s_logits, t_logits, temperature=self.params.kd_temperature)}


class CWDDistiller(Distiller):
    """Channel-wise distillation (Shu et al., ICCV 2021), paper Eq. (3): channel-wise KL of the
    spatial softmax at ``distill.tau`` (reference tau 4, weight 3 = ``distill.alpha``)."""

    params_class = CWDParams
    reference_alpha = 3.0
    zero_at_equality = ("cwd",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        return {"cwd": cwd_loss(s_logits, t_logits, tau=self.params.tau)}


__all__ = ["CWDDistiller", "CWDParams", "KDDistiller", "KDParams", "PixelKD", "channel_kl", "cwd_loss", "kd_loss"]
