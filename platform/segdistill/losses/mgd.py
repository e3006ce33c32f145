"""Masked generative distillation (MGD; Yang et al., ECCV 2022).

MGD transfers the teacher's *feature map* by generation rather than imitation: the student's
feature (aligned to the teacher's width by a 1x1 conv when the widths differ) is masked at random
positions (mask ratio lambda = 0.75: each position is zeroed with probability 0.75), a small
generator (3x3 conv, ReLU, 3x3 conv) must reconstruct the full teacher feature from it, and the
loss is the squared error summed over all elements, divided by the batch size. Reference weight
alpha_mgd = 2e-5, on the head feature after ASPP/PSP (the ``"head"`` feature tap: the reference's
``s_outputs[-1]``, train_mgd.py:206, 128 -> 256 channels for R18 -> R101).

The pure loss here takes the already generated map; :class:`MGDGenerator` is the trainable part
(owned by the distiller, optimised with the student). The random mask is drawn from the global
torch RNG, which checkpoints save and restore, so a resumed run draws the same masks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_features_4d


def mgd_loss(generated: Tensor, teacher_feat: Tensor) -> Tensor:
    """``sum (generated - teacher)^2 / B`` for (B, D, h, w) maps of equal shape; scalar float32."""
    check_features_4d("mgd_loss", generated, teacher_feat)
    if generated.shape != teacher_feat.shape:
        raise ValueError(f"mgd_loss: generated {tuple(generated.shape)} and teacher {tuple(teacher_feat.shape)} "
                         "feature maps must have the same shape")
    diff = generated.float() - teacher_feat.detach().float()
    return (diff * diff).sum() / generated.shape[0]


def random_keep_mask(batch: int, h: int, w: int, mask_ratio: float, *, device: torch.device | None = None) -> Tensor:
    """(B, 1, h, w) float mask: 0 with probability ``mask_ratio`` (masked), else 1 (kept).
    As the reference: ``where(rand > 1 - ratio, 0, 1)``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    r = torch.rand(batch, 1, h, w, device=device)
    return (r <= 1.0 - mask_ratio).float()


class MGDGenerator(nn.Module):
    """Align (1x1 conv, only if the widths differ) + the generator (3x3 conv, ReLU, 3x3 conv).

    ``forward(student_feat, keep_mask)`` -> the generated teacher-shaped map (B, Dt, h, w).
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.align: nn.Module = (nn.Identity() if student_channels == teacher_channels
                                 else nn.Conv2d(student_channels, teacher_channels, 1))
        self.generator = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, 3, padding=1),
        )

    def forward(self, student_feat: Tensor, keep_mask: Tensor) -> Tensor:
        # (B, Ds, h, w) -> (B, Dt, h, w), masked, -> generated (B, Dt, h, w)
        return self.generator(self.align(student_feat) * keep_mask)


__all__ = ["MGDGenerator", "mgd_loss", "random_keep_mask"]
