"""Dilated backbones: ResNet-18/101 and MobileNetV2 at output stride 8, plus tiny CPU variants.

NOTES.md "Models in the reference code": output stride 8 with layer3 dilated by 2 and layer4 by 4;
MobileNetV2 dilated to output stride 8 with 320 output channels (its final 1x1 conv to 1280
channels dropped). Output strides 4 and 16 are also supported (mainly for the tiny variants).

Dilation follows the reference code and torchvision's ``replace_stride_with_dilation``: in a stage
dilated by ``d`` the former stride-2 3x3 conv keeps stride 1 with dilation ``d // 2`` (the previous
stage's dilation), every other 3x3 conv gets dilation ``d``, and strided 1x1 shortcuts get stride 1.

Stem: the reference ResNets use a deep stem (three 3x3 convs, 128 channels into layer1). We keep
torchvision's plain stem (7x7 conv, 64 channels, max-pool) because pretrained weights come as
torchvision-format state dicts, which only fit the plain stem. Parameter counts therefore differ
slightly from the paper's (e.g. DeepLab-R18 ~13.5M here vs 13.6M in Table II).

Every backbone returns ``{"stage1": ..., "stage4": ...}``; at output stride 8 with input (B, 3, H, W)
the stages are at H/4, H/8, H/8, H/8.
"""

from __future__ import annotations

from typing import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

STAGES: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4")


def stage_dilations(output_stride: int) -> tuple[int, int, int]:
    """Dilations of stages 2, 3, 4 for ``output_stride`` in (4, 8, 16); the stem + stage 1 give /4."""
    table = {4: (2, 4, 8), 8: (1, 2, 4), 16: (1, 1, 2)}
    if output_stride not in table:
        raise ValueError(f"output_stride must be one of {sorted(table)}, got {output_stride}")
    return table[output_stride]


def stage_strides(output_stride: int) -> dict[str, int]:
    """Input-to-feature stride of each stage at ``output_stride`` (e.g. OS 8: 4, 8, 8, 8)."""
    strides, s = {}, 4
    for name, d in zip(STAGES, (1, *stage_dilations(output_stride))):
        if name != "stage1" and d == 1:
            s *= 2
        strides[name] = s
    return strides


def dilate_(stage: nn.Module, dilation: int) -> None:
    """Turn a stride-2 stage into a stride-1 stage dilated by ``dilation``, in place.

    The strided 3x3 conv (first block) gets dilation ``dilation // 2``, other 3x3 convs get
    ``dilation``, strided 1x1 convs (shortcuts, MobileNetV2 has none) only lose their stride. This
    is torchvision's ``replace_stride_with_dilation`` for Bottleneck ResNets, CIRKD's
    ``BasicBlockV1b`` for BasicBlock ResNets (torchvision refuses dilated BasicBlocks, so we do it by
    hand) and CIRKD's ``_nostride_dilate`` for MobileNetV2.
    """
    if dilation == 1:
        return
    for m in stage.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if m.stride == (2, 2):
            m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = m.padding = (dilation // 2, dilation // 2)
        elif m.kernel_size == (3, 3):
            m.dilation = m.padding = (dilation, dilation)


class ResNetBackbone(nn.Module):
    """Dilated ResNet trunk with torchvision module names (``conv1``, ``bn1``, ``layer1``...).

    Keeping torchvision's names makes ``state_dict()`` keys identical to a torchvision ResNet's
    minus ``fc.*``, which is how ``load_backbone_weights`` loads ImageNet weights.
    """

    ignored_weight_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(
        self,
        conv1: nn.Conv2d,
        bn1: nn.BatchNorm2d,
        layers: Sequence[nn.Sequential],
        *,
        output_stride: int,
        torchvision_arch: str | None,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"a ResNet backbone needs 4 layers, got {len(layers)}")
        self.conv1, self.bn1 = conv1, bn1
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.output_stride = output_stride
        # name of the torchvision classifier whose weights fit this trunk; None for tiny variants
        self.torchvision_arch = torchvision_arch
        self.channels: dict[str, int] = {
            name: _block_out_channels(layer[-1]) for name, layer in zip(STAGES, layers)
        }

    @classmethod
    def from_torchvision(cls, net: torchvision.models.ResNet, *, output_stride: int, arch: str) -> ResNetBackbone:
        """Wrap an (already dilated) torchvision ResNet, dropping its avgpool and fc."""
        layers = (net.layer1, net.layer2, net.layer3, net.layer4)
        return cls(net.conv1, net.bn1, layers, output_stride=output_stride, torchvision_arch=arch)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        # x: (B, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, C0, H/4, W/4)
        s1 = self.layer1(x)  # (B, C1, H/4, W/4)
        s2 = self.layer2(s1)  # (B, C2, H/8, W/8) at OS 8 (H/4 at OS 4)
        s3 = self.layer3(s2)  # (B, C3, H/8, W/8) at OS 8
        s4 = self.layer4(s3)  # (B, C4, H/8, W/8) at OS 8
        return {"stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4}


class MobileNetV2Backbone(nn.Module):
    """Dilated MobileNetV2 ``features[:-1]`` (final 1x1 conv to 1280 dropped; NOTES.md).

    Stages split at the stride-2 blocks as in CIRKD (``down_idx = [2, 4, 7, 14]``):
    stage1 = features[0:4] (/4, 24 ch), stage2 = [4:7] (/8, 32 ch), stage3 = [7:14] (96 ch),
    stage4 = [14:18] (320 ch) for width multiplier 1. Module names match torchvision's
    (``features.0`` ... ``features.17``).
    """

    ignored_weight_prefixes: tuple[str, ...] = ("classifier.", "features.18.")
    _stage_ends: tuple[int, ...] = (3, 6, 13, 17)  # index of the last block of each stage

    def __init__(self, features: nn.Sequential, *, output_stride: int, torchvision_arch: str | None) -> None:
        super().__init__()
        if len(features) != 18:
            raise ValueError(f"expected MobileNetV2 features[:-1] (18 modules), got {len(features)}")
        self.features = features
        self.output_stride = output_stride
        self.torchvision_arch = torchvision_arch
        self.channels: dict[str, int] = {
            name: int(features[i].out_channels) for name, i in zip(STAGES, self._stage_ends)
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        # x: (B, 3, H, W) -> stages at H/4, H/8, H/8, H/8 (OS 8)
        out: dict[str, Tensor] = {}
        names = iter(STAGES)
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self._stage_ends:
                out[next(names)] = x
        return out


Backbone = ResNetBackbone | MobileNetV2Backbone


def _block_out_channels(block: nn.Module) -> int:
    bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2  # last BN of the block
    return int(bn.num_features)


def _dilate_stages(stages: Sequence[nn.Module], output_stride: int) -> None:
    for stage, d in zip(stages, stage_dilations(output_stride)):
        dilate_(stage, d)


# ---------------------------------------------------------------- paper backbones (torchvision)


def resnet18_backbone(output_stride: int = 8) -> ResNetBackbone:
    """torchvision ResNet-18 (BasicBlock), dilated by hand; ``weights=None`` (load them later)."""
    stage_dilations(output_stride)  # validate first
    net = torchvision.models.resnet18(weights=None)
    _dilate_stages((net.layer2, net.layer3, net.layer4), output_stride)
    return ResNetBackbone.from_torchvision(net, output_stride=output_stride, arch="resnet18")


def resnet101_backbone(output_stride: int = 8) -> ResNetBackbone:
    """torchvision ResNet-101 (Bottleneck) with ``replace_stride_with_dilation``; ``weights=None``."""
    dilated = [d > 1 for d in stage_dilations(output_stride)]
    net = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=dilated)
    return ResNetBackbone.from_torchvision(net, output_stride=output_stride, arch="resnet101")


def mobilenet_v2_backbone(output_stride: int = 8, width_mult: float = 1.0) -> MobileNetV2Backbone:
    """torchvision MobileNetV2 ``features[:-1]`` dilated to ``output_stride`` (320 ch at width 1)."""
    stage_dilations(output_stride)
    net = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
    features = net.features[:-1]  # drop the final 1x1 conv to 1280 channels
    _dilate_stages((features[4:7], features[7:14], features[14:18]), output_stride)
    arch = "mobilenet_v2" if width_mult == 1.0 else None
    return MobileNetV2Backbone(features, output_stride=output_stride, torchvision_arch=arch)


# ---------------------------------------------------------------- tiny CPU backbones


def tiny_resnet_backbone(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    widths: Sequence[int],
    *,
    stem_width: int,
    output_stride: int = 8,
    zero_init_residual: bool = True,
) -> ResNetBackbone:
    """A narrow/shallow ResNet built from torchvision's own blocks, dilated like the paper models.

    Same stem (7x7 stride-2 conv + max-pool), block classes, shortcut layout, dilation rule and
    initialisation as the torchvision ResNets; only ``layers`` (blocks per stage) and ``widths``
    (``planes`` per stage; Bottleneck outputs ``4 * planes``) differ. Has no pretrained weights, so
    by default each block's last BN starts at zero (torchvision's ``zero_init_residual``): every
    block starts as the identity, which lets the deep from-scratch variants train quickly.
    """
    stage_dilations(output_stride)
    if len(layers) != 4 or len(widths) != 4:
        raise ValueError(f"need 4 stage depths and widths, got {layers} and {widths}")
    conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
    bn1 = nn.BatchNorm2d(stem_width)
    stages: list[nn.Sequential] = []
    inplanes = stem_width
    for i, (n, planes) in enumerate(zip(layers, widths)):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        blocks = [block(inplanes, planes, stride, downsample)]
        inplanes = planes * block.expansion
        blocks += [block(inplanes, planes) for _ in range(1, n)]
        stages.append(nn.Sequential(*blocks))
    _dilate_stages(stages[1:], output_stride)
    trunk = ResNetBackbone(conv1, bn1, stages, output_stride=output_stride, torchvision_arch=None)
    for m in trunk.modules():  # torchvision ResNet's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for stage in stages:
            for blk in stage:
                bn_last = blk.bn3 if isinstance(blk, Bottleneck) else blk.bn2
                nn.init.zeros_(bn_last.weight)
    return trunk


def tiny_mobilenet_v2_backbone(output_stride: int = 8, width_mult: float = 0.5) -> MobileNetV2Backbone:
    """torchvision MobileNetV2 at ``width_mult`` (160 output channels at 0.5), same dilation."""
    return mobilenet_v2_backbone(output_stride, width_mult=width_mult)


def conv_geometry(module: nn.Module) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(name, stride, dilation, padding) of every Conv2d: used to compare dilation schemes."""
    return [
        (name, tuple(m.stride), tuple(m.dilation), tuple(m.padding))  # type: ignore[arg-type]
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d)
    ]


__all__ = [
    "STAGES",
    "Backbone",
    "MobileNetV2Backbone",
    "ResNetBackbone",
    "conv_geometry",
    "dilate_",
    "mobilenet_v2_backbone",
    "resnet101_backbone",
    "resnet18_backbone",
    "stage_dilations",
    "stage_strides",
    "tiny_mobilenet_v2_backbone",
    "tiny_resnet_backbone",
]
