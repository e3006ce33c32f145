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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import check, check_finite
from ._checks import check_features_4d
from .distiller import Distiller, DistillSettings
from .params import FeatureTap, require_nonnegative
from .skd import match_size


@dataclass(frozen=True)
class MGDParams(FeatureTap):
    """MGD's parameters: the feature tap, the weight ``mgd_weight`` of the generation loss
    (reference 2e-5) and the share of masked positions ``mgd_mask_ratio`` (reference 0.75, in [0, 1))."""

    mgd_weight: float = 2e-5
    mgd_mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        require_nonnegative("mgd_weight", self.mgd_weight)
        check_finite("distill.mgd_mask_ratio", self.mgd_mask_ratio)
        check(0 <= self.mgd_mask_ratio < 1, f"distill.mgd_mask_ratio must be in [0, 1), got {self.mgd_mask_ratio}")


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


class MGDDistiller(Distiller):
    """Masked generative distillation (Yang et al., ECCV 2022). Transfers the teacher's feature map
    (tap ``"head"``: the head feature after ASPP/PSP, the reference's ``s_outputs[-1]``,
    train_mgd.py:206; 128 -> 256 channels for R18 -> R101) by generating it from the student's
    randomly masked feature (``distill.mgd_mask_ratio`` 0.75) with an align conv + generator owned
    here; weight ``distill.mgd_weight`` 2e-5 on the summed squared error / B. Reference
    ``distill.alpha = 1``."""

    params_class = MGDParams
    feature_tap = "head"

    def __init__(self, cfg: DistillSettings, **kw) -> None:
        super().__init__(cfg, **kw)
        self.generator = MGDGenerator(self.student_width, self.teacher_width)

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        fs, ft = self.tapped(s_features, t_features)
        fs = match_size(fs, ft)
        b, _, h, w = ft.shape
        keep = random_keep_mask(b, h, w, self.params.mgd_mask_ratio, device=ft.device).to(fs.dtype)
        return {"mgd": self.params.mgd_weight * mgd_loss(self.generator(fs, keep), ft)}


__all__ = ["MGDDistiller", "MGDGenerator", "MGDParams", "mgd_loss", "random_keep_mask"]
