"""Holistic Weighted Distillation (HWD), paper Eq. (2)-(7), with the semantics pinned in DESIGN.md.

Paper versus released code, exposed as explicit options:
- ``pixel_correction="n"`` (paper, Sec. III-C.1): CD'_c = CD_c / (N_c + 1).
  ``pixel_correction="none"``: the released command's recipe, CD'_c = CD_c.
- ``weighting="smooth"`` (paper Eq. 7): w = C * softmax_c((1 - beta^{w^n}) / (1 - beta)).
  ``weighting="softmax"`` (Fig. 6's alternative): w = C * softmax_c(w^n / tau').
N_c counts pixels of class c in the labels nearest-downsampled to the logit resolution; ignore
pixels never count. Normalisation is per image over all C channels with the unbiased std and no
epsilon; a zero std (all channels equal) gives w^n = mu for every channel, hence uniform weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import check, check_finite
from ._checks import check_labels, check_logit_pair
from .cwd import channel_kl
from .distiller import Distiller
from .params import MethodParams, require_positive

PIXEL_CORRECTIONS = ("n", "none")
WEIGHTINGS = ("smooth", "softmax")


@dataclass(frozen=True)
class HWDParams(MethodParams):
    """HWD's parameters (paper Sec. III, supplement Table I): ``tau`` the activation temperature,
    ``mu``/``sigma`` the normalisation's shift and scale (Eq. 6), ``beta`` the smoothing (Eq. 7, in
    (0, 1)), ``pixel_correction`` 'n' = the paper's CD/(N_c+1) or 'none' = the released code's
    recipe, ``weighting`` 'smooth' = Eq. 7 or 'softmax' = Fig. 6's alternative with temperature
    ``tau_prime``. Every default and the reference's value: docs/METHODS.md."""

    tau: float = 4.0
    mu: float = 0.0
    sigma: float = 1.0
    beta: float = 0.1
    pixel_correction: str = "n"
    weighting: str = "smooth"
    tau_prime: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite("distill.mu", self.mu)
        for name in ("tau", "sigma", "tau_prime"):
            require_positive(name, getattr(self, name))
        check_finite("distill.beta", self.beta)
        check(0 < self.beta < 1, f"distill.beta must be in (0, 1), got {self.beta}")
        check(self.pixel_correction in PIXEL_CORRECTIONS,
              f"distill.pixel_correction must be one of {PIXEL_CORRECTIONS}, got {self.pixel_correction!r}")
        check(self.weighting in WEIGHTINGS, f"distill.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour downsampling of (B, H, W) integer labels to (B, h, w)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    down = F.interpolate(labels[:, None].float(), size=size, mode="nearest")  # (B, 1, h, w)
    return down[:, 0].long()


def class_pixel_counts(labels: Tensor, num_classes: int, size: tuple[int, int], ignore_index: int = 255) -> Tensor:
    """N_c per image: (B, C) float counts of each class in labels downsampled to ``size``.

    Vectorised with one scatter_add (no loop over images or classes); labels outside
    [0, num_classes) - the ignore index included - are not counted.
    """
    small = downsample_labels(labels, size).reshape(labels.shape[0], -1)  # (B, h*w)
    valid = (small >= 0) & (small < num_classes) & (small != ignore_index)
    index = torch.where(valid, small, torch.full_like(small, num_classes))  # invalid -> overflow bin
    counts = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device, dtype=torch.float32)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    return counts[:, :num_classes]  # (B, C)


@torch.no_grad()
def hwd_weights(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    tau: float = 4.0,
    mu: float = 0.0,
    sigma: float = 1.0,
    beta: float = 0.1,
    pixel_correction: str = "n",
    weighting: str = "smooth",
    tau_prime: float = 1.0,
    ignore_index: int = 255,
) -> Tensor:
    """Per-image channel weights w_c, paper Eq. (5)-(7). No gradient.

    Args:
        student_logits, teacher_logits: (B, C, h, w) at the model's output resolution.
        labels: (B, H, W) integer ground truth at input resolution (``ignore_index`` = void).
    Returns:
        (B, C) float32 weights with ``w.sum(1) == C`` for every image.
    """
    check_logit_pair(student_logits, teacher_logits)
    check_labels(labels, student_logits)
    HWDParams(tau=tau, mu=mu, sigma=sigma, beta=beta, pixel_correction=pixel_correction, weighting=weighting,
              tau_prime=tau_prime)  # validates the options
    b, c, h, w = student_logits.shape
    ps = F.softmax(student_logits.float().reshape(b, c, -1) / tau, dim=-1)  # (B, C, hw), Eq. 2
    pt = F.softmax(teacher_logits.float().reshape(b, c, -1) / tau, dim=-1)
    cd = ((pt - ps) ** 2).mean(dim=-1).double()  # (B, C), Eq. 5
    if pixel_correction == "n":
        n_c = class_pixel_counts(labels, c, (h, w), ignore_index).double()  # (B, C)
        cd = cd / (n_c + 1.0)
    mean = cd.mean(dim=1, keepdim=True)
    std = cd.std(dim=1, unbiased=True, keepdim=True)  # (B, 1); no epsilon (reference code)
    centred = cd - mean
    # Zero std means every channel equals the mean: the normalised value is 0, not 0/0.
    z = torch.where(std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(centred))
    wn = mu + z * sigma  # (B, C), Eq. 6
    if weighting == "smooth":
        logits_w = (1.0 - torch.pow(torch.as_tensor(beta, dtype=wn.dtype), wn)) / (1.0 - beta)  # Eq. 7 inner
    else:
        logits_w = wn / tau_prime
    weights = c * F.softmax(logits_w, dim=1)
    return weights.float()


def hwd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    tau: float = 4.0,
    mu: float = 0.0,
    sigma: float = 1.0,
    beta: float = 0.1,
    pixel_correction: str = "n",
    weighting: str = "smooth",
    tau_prime: float = 1.0,
    ignore_index: int = 255,
) -> Tensor:
    """HWD loss, paper Eq. (4): ``tau^2 / C * sum_c w_c * KL_c``, averaged over the batch.

    Args:
        student_logits: (B, C, h, w); gradients flow here only.
        teacher_logits: (B, C, h, w), treated as constant.
        labels: (B, H, W), used only for N_c (the pixel correction).
    Returns:
        scalar float32 tensor.
    """
    teacher_logits = teacher_logits.detach()
    weights = hwd_weights(
        student_logits, teacher_logits, labels, tau=tau, mu=mu, sigma=sigma, beta=beta,
        pixel_correction=pixel_correction, weighting=weighting, tau_prime=tau_prime,
        ignore_index=ignore_index,
    )  # (B, C), checks inputs
    kl = channel_kl(student_logits, teacher_logits, tau)  # (B, C)
    b, c = kl.shape
    return (weights * kl).sum() * (tau * tau) / (b * c)


class HWDDistiller(Distiller):
    """Holistic weighted distillation, paper Eq. (4)-(7) (alpha 3, tau 4, beta 0.1; mu per dataset)."""

    params_class = HWDParams
    reference_alpha = 3.0
    zero_at_equality = ("hwd",)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.params
        return {"hwd": hwd_loss(
            s_logits, t_logits, labels, tau=c.tau, mu=c.mu, sigma=c.sigma, beta=c.beta,
            pixel_correction=c.pixel_correction, weighting=c.weighting, tau_prime=c.tau_prime,
            ignore_index=self.ignore_index,
        )}


__all__ = [
    "PIXEL_CORRECTIONS", "WEIGHTINGS", "HWDDistiller", "HWDParams", "class_pixel_counts", "downsample_labels",
    "hwd_loss", "hwd_weights"
]
