"""The segmentation network: backbone + main head (+ auxiliary FCN head), returning ``SegOutput``.

Contract (docs/CONTRACTS.md, models): ``model(x)`` with x (B, 3, H, W) returns
``SegOutput(logits, aux, features)``:
- ``logits`` (B, C, H/os, W/os), NOT upsampled (HWD and CWD work at this resolution, paper Eq. 2-4;
  the trainer upsamples for the cross-entropy);
- ``aux`` (B, C, h3, w3) from the FCN head on stage 3 (ResNets with ``aux=True``), else None;
  at output stride 8 or 4 this is the logits' resolution, at 16 too (stage 3 and 4 share it);
- ``features``: "stage1".."stage4" (backbone stages), "backbone" (= stage4, the head's input) and
  "head" (the input of the final 1x1 classifier).

Feature taps are explicit (STYLE.md 9): ``feature_channels`` / ``feature_strides`` tell a method at
construction time which features exist and their sizes.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from segdistill.models.backbones import STAGES, Backbone, stage_strides
from segdistill.models.heads import DeepLabV3Head, FCNHead, PSPHead

FEATURE_NAMES: tuple[str, ...] = (*STAGES, "backbone", "head")


class SegOutput(NamedTuple):
    """What every segmentation model returns (docs/CONTRACTS.md)."""

    logits: Tensor  # (B, C, H/os, W/os)
    aux: Tensor | None  # (B, C, h, w) or None
    features: dict[str, Tensor]  # FEATURE_NAMES -> (B, Ck, hk, wk)


class SegmentationModel(nn.Module):
    """Backbone + head (+ aux head); attributes ``arch``, ``num_classes``, ``output_stride``."""

    def __init__(
        self,
        arch: str,
        backbone: Backbone,
        head: DeepLabV3Head | PSPHead,
        aux_head: FCNHead | None,
        *,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.arch = arch
        self.num_classes = num_classes
        self.output_stride = backbone.output_stride
        self.feature_channels: dict[str, int] = {
            **backbone.channels,
            "backbone": backbone.channels["stage4"],
            "head": head.width,
        }
        strides = stage_strides(self.output_stride)
        self.feature_strides: dict[str, int] = {**strides, "backbone": strides["stage4"], "head": strides["stage4"]}

    def forward(self, x: Tensor) -> SegOutput:
        # x: (B, 3, H, W); stages at H/4 .. H/os
        stages = self.backbone(x)
        logits, head_feature = self.head(stages["stage4"])  # (B, C, H/os, W/os), (B, width, H/os, W/os)
        aux = self.aux_head(stages["stage3"]) if self.aux_head is not None else None
        features = {**stages, "backbone": stages["stage4"], "head": head_feature}
        return SegOutput(logits, aux, features)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, output_stride={self.output_stride}"


__all__ = ["FEATURE_NAMES", "SegOutput", "SegmentationModel"]
