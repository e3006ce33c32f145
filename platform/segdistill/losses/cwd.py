"""Channel-wise distillation (CWD; Shu et al., ICCV 2021), paper Eq. (2)-(3)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._checks import check_logit_pair, check_positive


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
    check_positive("tau", tau)
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
    check_positive("temperature", temperature)
    t = temperature
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)  # (B, C, h, w)
    log_pt = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (B, h, w)
    return kl.mean() * (t * t)


__all__ = ["channel_kl", "cwd_loss", "kd_loss"]
