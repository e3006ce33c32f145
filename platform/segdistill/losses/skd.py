"""Structured knowledge distillation (SKD; Liu et al., TPAMI 2020): the pair-wise term.

SKD transfers three things: the per-pixel class distribution (pixel KD, :func:`kd_loss`), the
pair-wise similarity of spatially pooled features (this file), and the teacher's "look" of a whole
score map through an adversarial critic (:mod:`.adversarial`). The pair-wise term follows the
CIRKD codebase's ``CriterionStructuralKD`` (the code the paper's numbers come from): features are
max-pooled with a 2x2 window (``ceil_mode``), L2-normalised over channels, the (N, N) cosine
similarity matrices of student and teacher are compared with a squared error, averaged over
batch and entries. Student and teacher may have different channel counts (only N x N matrices
are compared); a student map of a different spatial size is resized bilinearly to the teacher's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import check
from ._checks import check_features_4d
from .adversarial import AdversarialMixin, AdversarialParams
from .cwd import PixelKD, kd_loss
from .distiller import Distiller, DistillSettings
from .params import FeatureTap, require_nonnegative


@dataclass(frozen=True)
class SKDParams(FeatureTap, PixelKD, AdversarialParams):
    """SKD's parameters: the feature tap, the pixel-KD term, the critic's group, and the pair-wise
    term's max-pool window ``skd_pair_pool`` (reference 2x2, in [1, 64]) and weight
    ``skd_pair_weight`` (reference 10)."""

    skd_pair_pool: int = 2
    skd_pair_weight: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.skd_pair_pool <= 64, f"distill.skd_pair_pool must be in [1, 64], got {self.skd_pair_pool}")
        require_nonnegative("skd_pair_weight", self.skd_pair_weight)


def match_size(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """The student map (B, Ds, h, w) resized bilinearly to the teacher's (ht, wt) if they differ."""
    if student_feat.shape[-2:] == teacher_feat.shape[-2:]:
        return student_feat
    return F.interpolate(student_feat, size=teacher_feat.shape[-2:], mode="bilinear", align_corners=False)


def pooled_unit_features(feat: Tensor, pool: int) -> Tensor:
    """Max-pool (B, D, h, w) with a ``pool`` x ``pool`` window (ceil mode), L2-normalise over D;
    returns (B, D, N) with N = ceil(h / pool) * ceil(w / pool)."""
    if pool > 1:
        feat = F.max_pool2d(feat, kernel_size=pool, stride=pool, ceil_mode=True)
    feat = F.normalize(feat.float(), p=2, dim=1)
    return feat.flatten(2)


def pairwise_similarity_loss(student_feat: Tensor, teacher_feat: Tensor, *, pool: int = 2) -> Tensor:
    """SKD's pair-wise distillation: ``mean_{b,i,j} (a^S_bij - a^T_bij)^2`` with ``a_bij`` the
    cosine similarity of pooled positions i and j of image b.

    Args:
        student_feat: (B, Ds, h, w); gradients flow here.
        teacher_feat: (B, Dt, ht, wt), treated as constant.
        pool: max-pool window (CIRKD codebase: 2).
    Returns:
        scalar float32 tensor.
    """
    check_features_4d("pairwise_similarity_loss", student_feat, teacher_feat)
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    s = pooled_unit_features(match_size(student_feat, teacher_feat), pool)  # (B, Ds, N)
    t = pooled_unit_features(teacher_feat.detach(), pool)  # (B, Dt, N)
    sim_s = torch.bmm(s.transpose(1, 2), s)  # (B, N, N)
    sim_t = torch.bmm(t.transpose(1, 2), t)
    return ((sim_s - sim_t) ** 2).mean()


class SKDDistiller(AdversarialMixin, Distiller):
    """Structured KD (Liu et al., TPAMI 2020). Transfers the per-pixel class distribution (pixel KD,
    ``distill.kd_weight``, reference 1), the pair-wise cosine similarity of max-pooled features
    (window ``distill.skd_pair_pool`` 2, weight ``distill.skd_pair_weight`` 10; tap ``"head"`` = the
    reference's feature after the ASPP/PSP block) and the holistic look of the score map through a
    spectral-norm critic on the logits (``distill.adv_loss`` 'hinge' as the reference scripts, or
    'wgan-gp' with gradient penalty ``distill.adv_gp_weight`` 10; student term ``distill.adv_g_weight``
    1e-3; critic ``distill.adv_d_weight`` 0.1, Adam lr ``distill.adv_lr`` 4e-4, its own optimiser).
    Reference ``distill.alpha = 1``. Critic deviations: see :mod:`.adversarial`."""

    params_class = SKDParams
    feature_tap = "head"
    zero_at_equality = ("kd", "pair")

    def __init__(self, cfg: DistillSettings, **kw) -> None:
        super().__init__(cfg, **kw)
        self._make_adversary(self.num_classes)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.params
        fs, ft = self.tapped(s_features, t_features)
        return {"kd": c.kd_weight * kd_loss(s_logits, t_logits, temperature=c.kd_temperature),
                "pair": c.skd_pair_weight * pairwise_similarity_loss(fs, ft, pool=c.skd_pair_pool),
                "adv_g": self._adversarial_term(s_logits, t_logits)}


__all__ = ["SKDDistiller", "SKDParams", "match_size", "pairwise_similarity_loss", "pooled_unit_features"]
