"""Intra-class feature variation distillation (IFVD; Wang et al., ECCV 2020).

IFVD transfers, besides pixel KD and an adversarial term, the *intra-class feature variation*:
for every pixel, the cosine similarity between its feature and the prototype (mean feature) of its
ground-truth class in the same image. The student's similarity map is matched to the teacher's
with a mean squared error. As in the reference ``CriterionIFV`` (CIRKD codebase):
- labels are nearest-downsampled to the feature resolution;
- prototypes are per image and per class, ``sum(mask * f) / (sum(mask) + 1e-6)``;
- pixels without a valid class (ignore index, ids >= C) keep their own feature as "prototype",
  so their similarity is 1 for both networks and they add 0 to the error, but they do count in the
  mean's denominator (MSE over all B*h*w positions, as in the reference).
The reference computes the prototypes with a Python loop over classes; this is one scatter_add.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_features_4d, check_labels
from .adversarial import AdversarialMixin, AdversarialParams
from .cwd import PixelKD, kd_loss
from .distiller import Distiller, DistillSettings
from .hwd import downsample_labels
from .params import FeatureTap, require_nonnegative


@dataclass(frozen=True)
class IFVDParams(FeatureTap, PixelKD, AdversarialParams):
    """IFVD's parameters: the feature tap, the pixel-KD term, the critic's group (as SKD's) and the
    weight ``ifvd_weight`` of the intra-class feature variation term (reference 20)."""

    ifvd_weight: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative("ifvd_weight", self.ifvd_weight)


def class_prototype_similarity(feat: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Cosine similarity of each pixel's feature to its class prototype in its own image.

    Args:
        feat: (B, D, h, w).
        labels: (B, H, W) integer ground truth (any resolution; nearest-downsampled to (h, w)).
    Returns:
        (B, h, w) float32; exactly 1 at pixels without a valid class.
    """
    b, d, h, w = feat.shape
    small = downsample_labels(labels, (h, w)).reshape(b, -1)  # (B, hw)
    valid = (small >= 0) & (small < num_classes) & (small != ignore_index)
    index = torch.where(valid, small, torch.full_like(small, num_classes))  # invalid -> overflow bin
    f = feat.float().reshape(b, d, -1)  # (B, D, hw)
    sums = torch.zeros(b, d, num_classes + 1, dtype=f.dtype, device=f.device)
    sums.scatter_add_(2, index[:, None, :].expand(b, d, -1), f)  # (B, D, C+1)
    counts = torch.zeros(b, num_classes + 1, dtype=f.dtype, device=f.device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=f.dtype))  # (B, C+1)
    protos = sums / (counts[:, None, :] + 1e-6)  # (B, D, C+1)
    centre = torch.gather(protos, 2, index[:, None, :].expand(b, d, -1))  # (B, D, hw)
    centre = torch.where(valid[:, None, :], centre, f)  # no class: the pixel's own feature
    return F.cosine_similarity(f, centre, dim=1).reshape(b, h, w)


def ifv_loss(student_feat: Tensor, teacher_feat: Tensor, labels: Tensor, *, num_classes: int,
             ignore_index: int = 255) -> Tensor:
    """IFVD's loss: ``mean_{b,i} (cos(f^S_bi, proto^S_b,y_bi) - cos(f^T_bi, proto^T_b,y_bi))^2``.

    Args:
        student_feat: (B, Ds, h, w); gradients flow here.
        teacher_feat: (B, Dt, ht, wt), constant. Channel counts may differ; a student map of another
            spatial size is resized bilinearly to the teacher's first.
        labels: (B, H, W) integer ground truth.
    Returns:
        scalar float32 tensor.
    """
    check_features_4d("ifv_loss", student_feat, teacher_feat)
    check_labels(labels, student_feat)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    from .skd import match_size

    sim_s = class_prototype_similarity(match_size(student_feat, teacher_feat), labels, num_classes, ignore_index)
    sim_t = class_prototype_similarity(teacher_feat.detach(), labels, num_classes, ignore_index)
    return F.mse_loss(sim_s, sim_t)


class IFVDDistiller(AdversarialMixin, Distiller):
    """Intra-class feature variation distillation (Wang et al., ECCV 2020). Transfers pixel KD
    (``distill.kd_weight``, 1), the map of cosine similarities between each pixel's feature and its
    class prototype (``distill.ifvd_weight``, 20 per docs/REFERENCE.md; tap ``"head"``), and the same
    adversarial term as SKD. Reference ``distill.alpha = 1``."""

    params_class = IFVDParams
    feature_tap = "head"
    zero_at_equality = ("kd", "ifv")

    def __init__(self, cfg: DistillSettings, **kw) -> None:
        super().__init__(cfg, **kw)
        self._make_adversary(self.num_classes)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.params
        fs, ft = self.tapped(s_features, t_features)
        return {"kd": c.kd_weight * kd_loss(s_logits, t_logits, temperature=c.kd_temperature),
                "ifv": c.ifvd_weight * ifv_loss(fs, ft, labels, num_classes=self.num_classes,
                                                ignore_index=self.ignore_index),
                "adv_g": self._adversarial_term(s_logits, t_logits)}


__all__ = ["IFVDDistiller", "IFVDParams", "class_prototype_similarity", "ifv_loss"]
