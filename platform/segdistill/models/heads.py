"""Segmentation heads: DeepLabV3 (ASPP), PSPNet (pyramid pooling) and the auxiliary FCN head.

docs/REFERENCE.md "Architecture": DeepLabV3 uses ASPP rates (12, 24, 36) at output stride 8 plus
image pooling, width 128 (R18, MBV2) / 256 (R101), dropout 0.1 before the classifier; PSPNet uses
pyramid bins (1, 2, 3, 6) and width 128 (R18, MBV2) / 512 (R101); ResNets add an FCN head on layer3.
The paper models are these heads at the reference's widths (tests/test_reference.py checks their
outputs against the reference's); ``segdistill.models.reference`` maps their module names.

Details taken from the reference code (CIRKD lineage) rather than the paper:
- the ASPP projection ends with Dropout(0.5), the head block with Dropout(0.1);
- pooled branches are upsampled with ``align_corners=True``;
- PSPNet's pyramid branches are ``in_channels // 4`` wide and concatenated with the input
  (``2 * in_channels``) before a 3x3 conv to the head width;
- the FCN head is 3x3 conv to ``in_channels // 4``, BN, ReLU, Dropout(0.1), 1x1 classifier.

Each main head returns ``(logits, feature)`` where ``feature`` is the input of the final 1x1
classifier (after the 0.1 dropout, i.e. CIRKD's ``x_feat_after_aspp``; in eval mode the dropout is
the identity).

BatchNorm in the pooled branches sees one value per channel and image, so training mode needs a
batch of at least 2 (as in the reference code).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU with 'same' padding for odd kernels."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool, 1x1 conv-BN-ReLU, upsample back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, Cin, h, w) -> (B, Cout, 1, 1) -> (B, Cout, h, w)
        y = self.conv(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): 1x1, three atrous 3x3, image pooling, project."""

    def __init__(self, in_channels: int, width: int, rates: Sequence[int]) -> None:
        super().__init__()
        if len(rates) != 3:
            raise ValueError(f"ASPP needs 3 atrous rates, got {rates}")
        self.rates = tuple(int(r) for r in rates)
        self.b0 = conv_bn_relu(in_channels, width, 1)
        self.b1 = conv_bn_relu(in_channels, width, 3, dilation=self.rates[0])
        self.b2 = conv_bn_relu(in_channels, width, 3, dilation=self.rates[1])
        self.b3 = conv_bn_relu(in_channels, width, 3, dilation=self.rates[2])
        self.b4 = ImagePooling(in_channels, width)
        self.project = nn.Sequential(
            nn.Conv2d(5 * width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, Cin, h, w) -> 5 branches of (B, width, h, w) -> (B, width, h, w)
        branches = [self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)]
        return self.project(torch.cat(branches, dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP, then 3x3 conv-BN-ReLU, Dropout(0.1), 1x1 classifier (reference ``_DeepLabHead``)."""

    def __init__(self, in_channels: int, width: int, num_classes: int, rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, width, rates)
        self.block = nn.Sequential(conv_bn_relu(width, width, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.width = width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: (B, Cin, h, w) -> feature (B, width, h, w) -> logits (B, C, h, w)
        feature = self.block(self.aspp(x))
        return self.classifier(feature), feature


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling: per bin size, avg-pool, 1x1 conv-BN-ReLU, upsample; concat with x."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        branch = in_channels // 4
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, branch, 1)) for b in self.bins
        )
        self.out_channels = in_channels + branch * len(self.bins)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, Cin, h, w) -> (B, Cin + 4 * (Cin // 4), h, w)
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=True) for s in self.stages]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Module):
    """Pyramid pooling, 3x3 conv-BN-ReLU to ``width``, Dropout(0.1), 1x1 classifier."""

    def __init__(self, in_channels: int, width: int, num_classes: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.psp = PyramidPooling(in_channels, bins)
        self.block = nn.Sequential(conv_bn_relu(self.psp.out_channels, width, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.width = width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: (B, Cin, h, w) -> feature (B, width, h, w) -> logits (B, C, h, w)
        feature = self.block(self.psp(x))
        return self.classifier(feature), feature


class FCNHead(nn.Module):
    """Auxiliary head on stage 3 (reference ``_FCNHead``): 3x3 conv to Cin/4, BN, ReLU, drop, 1x1."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        inter = max(in_channels // 4, 1)
        self.block = nn.Sequential(conv_bn_relu(in_channels, inter, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(inter, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, Cin, h, w) -> (B, C, h, w)
        return self.classifier(self.block(x))


__all__ = ["ASPP", "DeepLabV3Head", "FCNHead", "ImagePooling", "PSPHead", "PyramidPooling", "conv_bn_relu"]
