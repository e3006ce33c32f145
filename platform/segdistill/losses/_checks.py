"""Input checks shared by the loss functions: clear ValueErrors instead of broadcasting surprises."""

from __future__ import annotations

from torch import Tensor


def check_logit_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Both logits must be (B, C, h, w) with identical shapes."""
    if student_logits.dim() != 4 or teacher_logits.dim() != 4:
        raise ValueError(
            "logits must be (B, C, h, w); got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (B, C, h, w)"
        )
    if student_logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes (channels), got {student_logits.shape[1]}")


def check_labels(labels: Tensor, logits: Tensor) -> None:
    """Labels must be an integer (B, H, W) map with the logits' batch size."""
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels batch {labels.shape[0]} != logits batch {logits.shape[0]}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == __import__("torch").bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_features_4d(name: str, *tensors: Tensor) -> None:
    """Feature maps must be (B, D, h, w) with one batch size."""
    for t in tensors:
        if t.dim() != 4:
            raise ValueError(f"{name}: feature maps must be (B, D, h, w), got {tuple(t.shape)}")
    if len({t.shape[0] for t in tensors}) > 1:
        raise ValueError(f"{name}: feature maps have different batch sizes {[tuple(t.shape) for t in tensors]}")
