"""Dilated backbones: ResNet-18/101 and MobileNetV2 at output stride 8, plus tiny CPU variants.

docs/REFERENCE.md "Architecture": output stride 8 with layer3 dilated by 2 and layer4 by 4;
MobileNetV2 dilated to output stride 8 with 320 output channels (its final 1x1 conv to 1280
channels dropped). Output strides 4 and 16 are also supported (mainly for the tiny variants), and
32 (no dilation: the ImageNet-classifier form of a backbone) for the backbones alone.

Dilation follows the reference code and torchvision's ``replace_stride_with_dilation``: in a stage
dilated by ``d`` the former stride-2 3x3 conv keeps stride 1 with dilation ``d // 2`` (the previous
stage's dilation), every other 3x3 conv gets dilation ``d``, and strided 1x1 shortcuts get stride 1.

Stems (``ResNetBackbone.stem``):
- ``"deep"``: the reference code's ResNetV1s stem (docs/REFERENCE.md): three 3x3 convs 3->64 (stride 2),
  64->64, 64->128, each with BN + ReLU, then a 3x3 stride-2 max-pool; stage 1 is entered with 128
  channels, so even ResNet-18's ``layer1.0`` has a 1x1 shortcut. The paper models use it, and its
  module names are the reference's (``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``,
  ``layer1``..``layer4``), so a reference ImageNet file loads by name.
- ``"plain"``: torchvision's 7x7 stride-2 conv + BN + ReLU + max-pool, 64 channels into stage 1; the
  ``*_tv_*`` models (for torchvision ImageNet weights) and the tiny variants use it.

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
    """Dilations of stages 2, 3, 4 for ``output_stride`` in (4, 8, 16, 32); the stem + stage 1 give /4.

    32 means no dilation (the ImageNet-classifier form); segmentation models take 4, 8 or 16."""
    table = {4: (2, 4, 8), 8: (1, 2, 4), 16: (1, 1, 2), 32: (1, 1, 1)}
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


STEMS: tuple[str, ...] = ("deep", "plain")


def deep_stem() -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The reference ResNetV1s stem's (conv, BN) pairs: 3x3 3->64 stride 2, 3x3 64->64, 3x3 64->128
    (docs/REFERENCE.md "Architecture"; each followed by ReLU, then a 3x3 stride-2 max-pool)."""
    convs = (nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.Conv2d(64, 64, 3, padding=1, bias=False),
             nn.Conv2d(64, 128, 3, padding=1, bias=False))
    return [(c, nn.BatchNorm2d(c.out_channels)) for c in convs]


class ResNetBackbone(nn.Module):
    """Dilated ResNet trunk with the reference's / torchvision's module names.

    ``stem`` holds one (conv, BN) pair (plain 7x7 stem) or three (deep stem), registered as
    ``conv1``/``bn1`` .. ``conv3``/``bn3``, then ``layer1``..``layer4``: the ``state_dict()`` keys are
    a torchvision ResNet's minus ``fc.*`` (plain stem) or a reference ResNetV1s file's (deep stem),
    which is how ``load_backbone_weights`` loads ImageNet weights.
    """

    ignored_weight_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(
        self,
        stem: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d]],
        layers: Sequence[nn.Sequential],
        *,
        output_stride: int,
        torchvision_arch: str | None,
        reference_file: str | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"a ResNet backbone needs 4 layers, got {len(layers)}")
        if len(stem) not in (1, 3):
            raise ValueError(f"a ResNet stem has 1 (plain) or 3 (deep) conv layers, got {len(stem)}")
        self.stem = "plain" if len(stem) == 1 else "deep"
        self.stem_depth = len(stem)
        for i, (conv, bn) in enumerate(stem, start=1):
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.output_stride = output_stride
        # the torchvision classifier whose weights fit this trunk (plain stem); None otherwise
        self.torchvision_arch = torchvision_arch
        # the reference code's ImageNet file for this trunk (deep stem), e.g. "resnet18-imagenet.pth"
        self.reference_file = reference_file
        self.channels: dict[str, int] = {
            name: _block_out_channels(layer[-1]) for name, layer in zip(STAGES, layers)
        }

    @classmethod
    def from_torchvision(cls, net: torchvision.models.ResNet, *, output_stride: int, arch: str) -> ResNetBackbone:
        """Wrap an (already dilated) torchvision ResNet, dropping its avgpool and fc."""
        layers = (net.layer1, net.layer2, net.layer3, net.layer4)
        return cls([(net.conv1, net.bn1)], layers, output_stride=output_stride, torchvision_arch=arch)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        # x: (B, 3, H, W)
        for i in range(1, self.stem_depth + 1):  # deep stem: (B, 64, H/2) -> (B, 64) -> (B, 128, H/2, W/2)
            x = self.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = self.maxpool(x)  # (B, C0, H/4, W/4)
        s1 = self.layer1(x)  # (B, C1, H/4, W/4)
        s2 = self.layer2(s1)  # (B, C2, H/8, W/8) at OS 8 (H/4 at OS 4)
        s3 = self.layer3(s2)  # (B, C3, H/8, W/8) at OS 8
        s4 = self.layer4(s3)  # (B, C4, H/8, W/8) at OS 8
        return {"stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4}


class MobileNetV2Backbone(nn.Module):
    """Dilated MobileNetV2 ``features[:-1]`` (final 1x1 conv to 1280 dropped; docs/REFERENCE.md).

    Stages split at the stride-2 blocks as in CIRKD (``down_idx = [2, 4, 7, 14]``):
    stage1 = features[0:4] (/4, 24 ch), stage2 = [4:7] (/8, 32 ch), stage3 = [7:14] (96 ch),
    stage4 = [14:18] (320 ch) for width multiplier 1. Module names match torchvision's
    (``features.0`` ... ``features.17``).
    """

    ignored_weight_prefixes: tuple[str, ...] = ("classifier.", "features.18.")
    _stage_ends: tuple[int, ...] = (3, 6, 13, 17)  # index of the last block of each stage

    def __init__(self, features: nn.Sequential, *, output_stride: int, torchvision_arch: str | None,
                 reference_file: str | None = None) -> None:
        super().__init__()
        if len(features) != 18:
            raise ValueError(f"expected MobileNetV2 features[:-1] (18 modules), got {len(features)}")
        self.features = features
        self.output_stride = output_stride
        self.torchvision_arch = torchvision_arch
        self.reference_file = reference_file  # the reference code's ImageNet file (width 1 only)
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


# ---------------------------------------------------------------- ResNet trunks


def resnet_stages(block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], widths: Sequence[int],
                  inplanes: int) -> list[nn.Sequential]:
    """Four undilated stages of torchvision ``block`` s entered with ``inplanes`` channels (stage 1 at
    stride 1, the others at stride 2), with a 1x1 conv + BN shortcut wherever the shape changes
    (the reference's ``ResNetV1b._make_layer`` and torchvision's ``_make_layer`` build the same)."""
    if len(layers) != 4 or len(widths) != 4:
        raise ValueError(f"need 4 stage depths and widths, got {layers} and {widths}")
    stages: list[nn.Sequential] = []
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
    return stages


def _init_resnet_(trunk: nn.Module) -> None:
    """torchvision's (and the reference ResNetV1b's) initialisation: Kaiming-normal (fan out) convs,
    BN weight 1 and bias 0."""
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def deep_stem_resnet_backbone(depth: str, output_stride: int = 8) -> ResNetBackbone:
    """The reference code's dilated ResNetV1s (``resnet18_v1s`` / ``resnet101_v1s``; docs/REFERENCE.md):
    deep stem, 128 channels into stage 1, torchvision's BasicBlock / Bottleneck (stride on the 3x3
    conv, as the reference's V1b blocks), dilated by :func:`dilate_` (the reference's
    ``_make_layer`` dilations, checked per conv in tests/test_reference.py). No avgpool / fc."""
    if depth not in _RESNETS:
        raise ValueError(f"depth must be one of {sorted(_RESNETS)}, got {depth!r}")
    stage_dilations(output_stride)  # validate first
    block, layers = _RESNETS[depth]
    stem = deep_stem()
    stages = resnet_stages(block, layers, (64, 128, 256, 512), inplanes=128)
    _dilate_stages(stages[1:], output_stride)
    trunk = ResNetBackbone(stem, stages, output_stride=output_stride, torchvision_arch=None,
                           reference_file=f"{depth}-imagenet.pth")
    _init_resnet_(trunk)
    return trunk


def resnet18_backbone(output_stride: int = 8, *, stem: str = "deep") -> ResNetBackbone:
    """Dilated ResNet-18 (BasicBlock); ``stem="deep"`` (reference) or ``"plain"`` (torchvision's
    ``resnet18``, dilated by hand); random weights (load them later)."""
    _check_stem(stem)
    if stem == "deep":
        return deep_stem_resnet_backbone("resnet18", output_stride)
    stage_dilations(output_stride)  # validate first
    net = torchvision.models.resnet18(weights=None)
    _dilate_stages((net.layer2, net.layer3, net.layer4), output_stride)
    return ResNetBackbone.from_torchvision(net, output_stride=output_stride, arch="resnet18")


def resnet101_backbone(output_stride: int = 8, *, stem: str = "deep") -> ResNetBackbone:
    """Dilated ResNet-101 (Bottleneck); ``stem="deep"`` (reference) or ``"plain"`` (torchvision's
    ``resnet101`` with ``replace_stride_with_dilation``); random weights."""
    _check_stem(stem)
    if stem == "deep":
        return deep_stem_resnet_backbone("resnet101", output_stride)
    dilated = [d > 1 for d in stage_dilations(output_stride)]
    net = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=dilated)
    return ResNetBackbone.from_torchvision(net, output_stride=output_stride, arch="resnet101")


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")


def mobilenet_v2_backbone(output_stride: int = 8, width_mult: float = 1.0) -> MobileNetV2Backbone:
    """torchvision MobileNetV2 ``features[:-1]`` dilated to ``output_stride`` (320 ch at width 1).

    At width 1 this is layer for layer the reference's ``MobileNetV2Dilated`` (ReLU6, no activation
    after the last pw-linear BN, residual when stride 1 and in == out, the same dilations); only the
    module names inside each block differ (``segdistill.models.reference`` maps them)."""
    stage_dilations(output_stride)
    net = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
    features = net.features[:-1]  # drop the final 1x1 conv to 1280 channels
    _dilate_stages((features[4:7], features[7:14], features[14:18]), output_stride)
    full = width_mult == 1.0
    return MobileNetV2Backbone(features, output_stride=output_stride, torchvision_arch="mobilenet_v2" if full else None,
                               reference_file="mobilenetv2-imagenet.pth" if full else None)


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

    Same plain stem (7x7 stride-2 conv + max-pool), block classes, shortcut layout, dilation rule and
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
    stages = resnet_stages(block, layers, widths, inplanes=stem_width)
    _dilate_stages(stages[1:], output_stride)
    trunk = ResNetBackbone([(conv1, bn1)], stages, output_stride=output_stride, torchvision_arch=None)
    _init_resnet_(trunk)
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
    "STEMS",
    "Backbone",
    "MobileNetV2Backbone",
    "ResNetBackbone",
    "conv_geometry",
    "deep_stem",
    "deep_stem_resnet_backbone",
    "dilate_",
    "mobilenet_v2_backbone",
    "resnet101_backbone",
    "resnet18_backbone",
    "resnet_stages",
    "stage_dilations",
    "stage_strides",
    "tiny_mobilenet_v2_backbone",
    "tiny_resnet_backbone",
]
