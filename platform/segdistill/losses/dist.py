"""DIST (Huang et al., NeurIPS 2022, "Knowledge distillation from a stronger teacher"), the
segmentation form: Pearson correlation of logits, inter-class and intra-class.

DIST transfers *relations* rather than exact values: per pixel, the correlation of the student's
and teacher's class-score vectors (inter-class relation), and per class, the correlation of their
score maps over all pixels of the batch (intra-class relation). docs/REFERENCE.md "Comparison methods": the segmentation version
uses the raw logits, with no softmax and no temperature (the classification version softmaxes at
temperature tau). Both terms are ``1 - mean Pearson``; reference weights beta = gamma = 1.
"""

from __future__ import annotations

from torch import Tensor

from ._checks import check_logit_pair

PEARSON_EPS = 1e-8


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


__all__ = ["dist_loss", "dist_terms", "inter_term", "intra_term", "pearson_rows"]
