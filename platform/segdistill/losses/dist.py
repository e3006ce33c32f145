"""DIST (Huang et al., NeurIPS 2022, "Knowledge distillation from a stronger teacher"), the
segmentation form: Pearson correlation of logits, inter-class and intra-class.

DIST transfers *relations* rather than exact values: per pixel, the correlation of the student's
and teacher's class-score vectors (inter-class relation), and per class, the correlation of their
score maps over all pixels of the batch (intra-class relation). docs/REFERENCE.md "Comparison methods": the segmentation version
uses the raw logits, with no softmax and no temperature (the classification version softmaxes at
temperature tau). Both terms are ``1 - mean Pearson``; reference weights beta = gamma = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..parallel import world_size
from ._checks import check_logit_pair
from .distiller import Distiller
from .params import BatchCoupling, require_nonnegative

PEARSON_EPS = 1e-8


@dataclass(frozen=True)
class DISTParams(BatchCoupling):
    """DIST's parameters: the batch coupling of the intra-class term and the weights
    ``dist_inter_weight`` / ``dist_intra_weight`` of the two terms (reference 1 and 1)."""

    dist_inter_weight: float = 1.0
    dist_intra_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative("dist_inter_weight", self.dist_inter_weight)
        require_nonnegative("dist_intra_weight", self.dist_intra_weight)


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of matching rows of (N, K) matrices: (N,), computed as the cosine of the
    centred rows with an epsilon of 1e-8 on the norms' product (constant rows give 0, not NaN)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(PEARSON_EPS)


def _pixel_rows(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(B*h*w, C) float32 rows of both logit maps (the teacher's detached)."""
    check_logit_pair(student_logits, teacher_logits)
    c = student_logits.shape[1]
    ys = student_logits.float().permute(0, 2, 3, 1).reshape(-1, c)
    yt = teacher_logits.detach().float().permute(0, 2, 3, 1).reshape(-1, c)
    return ys, yt


def inter_term(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """DIST inter-class term: rows are the B*h*w pixels, each a C-vector; ``1 - mean Pearson``."""
    ys, yt = _pixel_rows(student_logits, teacher_logits)
    return 1.0 - pearson_rows(ys, yt).mean()


def intra_term(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """DIST intra-class term: rows are the C classes, each a (B*h*w)-vector; ``1 - mean Pearson``
    (couples the batch's images: see ``distill.batch_coupling``)."""
    ys, yt = _pixel_rows(student_logits, teacher_logits)
    return 1.0 - pearson_rows(ys.t(), yt.t()).mean()


def dist_terms(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(inter, intra) DIST terms of (B, C, h, w) logits, each ``1 - mean Pearson``.

    inter: rows are the B*h*w pixels, each a C-vector. intra: rows are the C classes, each a
    (B*h*w)-vector. Scalars, float32; gradients flow into the student logits only.
    """
    ys, yt = _pixel_rows(student_logits, teacher_logits)
    return 1.0 - pearson_rows(ys, yt).mean(), 1.0 - pearson_rows(ys.t(), yt.t()).mean()


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, *, inter_weight: float = 1.0,
              intra_weight: float = 1.0) -> Tensor:
    """``inter_weight * inter + intra_weight * intra`` (DIST Eq. 7 with beta, gamma), scalar."""
    inter, intra = dist_terms(student_logits, teacher_logits)
    return inter_weight * inter + intra_weight * intra


class DISTDistiller(Distiller):
    """DIST (Huang et al., 2022), segmentation form: ``1 - Pearson`` of raw logits between student
    and teacher, inter-class (per pixel, over classes; ``distill.dist_inter_weight``, reference 1)
    and intra-class (per class, over the batch's pixels - the worker's or, with
    ``distill.batch_coupling = 'global'``, every worker's; ``distill.dist_intra_weight``, reference
    1). No softmax or temperature (docs/REFERENCE.md). Reference ``distill.alpha = 1``."""

    params_class = DISTParams
    zero_at_equality = ("inter", "intra")

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        if self.params.batch_coupling == "global" and world_size() > 1:  # intra over every worker's pixels
            inter, intra = inter_term(s_logits, t_logits), intra_term(*self.coupled(s_logits, t_logits.detach()))
        else:
            inter, intra = dist_terms(s_logits, t_logits)
        return {"inter": self.params.dist_inter_weight * inter, "intra": self.params.dist_intra_weight * intra}


__all__ = ["DISTDistiller", "DISTParams", "dist_loss", "dist_terms", "inter_term", "intra_term", "pearson_rows"]
