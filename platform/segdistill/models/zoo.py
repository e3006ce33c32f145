"""The registered architectures and ``build_model``.

Paper models (paper Tables II-III; the reference code's networks layer for layer, docs/REFERENCE.md
"Architecture"): ``deeplabv3_{r18,r101,mbv2}`` and ``pspnet_{r18,r101,mbv2}``: dilated backbones at
output stride 8 (ResNets with the reference's deep stem), aux FCN head on stage 3 for ResNets, head
widths as the reference's: DeepLabV3 ASPP 128 (R18, MBV2) / 256 (R101); PSPNet 128 (R18, MBV2) /
512 (R101). At 19 classes with the aux head: DeepLabV3-R101 61.12M, DeepLabV3-R18 13.60M,
DeepLabV3-MBV2 3.23M, PSPNet-R18 12.92M parameters (Table II: 61.1M, 13.6M, 3.2M, 12.9M).

Torchvision-stem variants ``{deeplabv3,pspnet}_tv_{r18,r101}``: the same networks with torchvision's
7x7 stem (64 channels into stage 1), for torchvision ImageNet weights (``model.pretrained``). The
MobileNetV2 models need no such variant: torchvision's MobileNetV2 is the reference's, so both
kinds of weight file load into ``*_mbv2``.

Tiny CPU variants ``{deeplabv3,pspnet}_tiny_{r18,r101,mbv2}`` run the same code paths (same block
classes, dilation rule, heads, aux head; the plain stem) at reduced width/depth:
- tiny_r18: BasicBlock x (2, 2, 2, 2), widths (16, 32, 64, 128), head 48 (the student);
- tiny_r101: Bottleneck x (3, 4, 12, 3), planes (24, 48, 96, 192) -> 768 channels, head 96 (the
  teacher: ~7x tiny_r18's parameters, a 12-block dilated stage 3 giving a stage-4 receptive field
  of ~615 px vs ~431 px for tiny_r18, and the paper's 2x head width);
- tiny_mbv2: MobileNetV2 width multiplier 0.5 (160 output channels), head 48.
Tiny models have no pretrained weights.
"""

from __future__ import annotations

from typing import Literal

from torchvision.models.resnet import BasicBlock, Bottleneck

from segdistill.models.backbones import (
    Backbone,
    ResNetBackbone,
    mobilenet_v2_backbone,
    resnet18_backbone,
    resnet101_backbone,
    stage_dilations,
    tiny_mobilenet_v2_backbone,
    tiny_resnet_backbone,
)
from segdistill.models.heads import DeepLabV3Head, FCNHead, PSPHead
from segdistill.models.registry import MODELS, get_factory, register_model
from segdistill.models.segmentor import SegmentationModel
from segdistill.models.weights import load_backbone_weights

ASPP_RATES_OS8: tuple[int, int, int] = (12, 24, 36)
OUTPUT_STRIDES: tuple[int, ...] = (4, 8, 16)  # of a segmentation model (backbones alone also take 32)
PSP_BINS: tuple[int, int, int, int] = (1, 2, 3, 6)


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP rates (12, 24, 36) at output stride 8, scaled by 8 / output_stride otherwise."""
    stage_dilations(output_stride)  # validates output_stride
    return tuple(r * 8 // output_stride for r in ASPP_RATES_OS8)  # type: ignore[return-value]


def _assemble(
    arch: str,
    backbone: Backbone,
    head: Literal["deeplabv3", "pspnet"],
    width: int,
    num_classes: int,
    aux: bool,
) -> SegmentationModel:
    in_channels = backbone.channels["stage4"]
    if head == "deeplabv3":
        main = DeepLabV3Head(in_channels, width, num_classes, aspp_rates(backbone.output_stride))
    else:
        main = PSPHead(in_channels, width, num_classes, PSP_BINS)
    # aux FCN head on stage 3 for ResNets only (the reference MobileNetV2 models have none)
    aux_head = None
    if aux and isinstance(backbone, ResNetBackbone):
        aux_head = FCNHead(backbone.channels["stage3"], num_classes)
    return SegmentationModel(arch, backbone, main, aux_head, num_classes=num_classes)


def _tiny_r18(output_stride: int) -> ResNetBackbone:
    return tiny_resnet_backbone(BasicBlock, (2, 2, 2, 2), (16, 32, 64, 128), stem_width=16, output_stride=output_stride)


def _tiny_r101(output_stride: int) -> ResNetBackbone:
    return tiny_resnet_backbone(Bottleneck, (3, 4, 12, 3), (24, 48, 96, 192), stem_width=32, output_stride=output_stride)


# ---------------------------------------------------------------- paper models


@register_model("deeplabv3_r18")
def deeplabv3_r18(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """DeepLabV3-ResNet18 (paper's main student): deep-stem R18, 512 -> ASPP width 128."""
    return _assemble("deeplabv3_r18", resnet18_backbone(output_stride), "deeplabv3", 128, num_classes, aux)


@register_model("deeplabv3_r101")
def deeplabv3_r101(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """DeepLabV3-ResNet101 (paper's teacher): deep-stem R101, 2048 -> ASPP width 256."""
    return _assemble("deeplabv3_r101", resnet101_backbone(output_stride), "deeplabv3", 256, num_classes, aux)


@register_model("deeplabv3_mbv2")
def deeplabv3_mbv2(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """DeepLabV3-MobileNetV2: 320 -> ASPP width 128, no aux head (the reference has none)."""
    return _assemble("deeplabv3_mbv2", mobilenet_v2_backbone(output_stride), "deeplabv3", 128, num_classes, aux)


@register_model("pspnet_r18")
def pspnet_r18(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """PSPNet-ResNet18: deep-stem R18, pyramid (1, 2, 3, 6) on 512 channels, head width 128."""
    return _assemble("pspnet_r18", resnet18_backbone(output_stride), "pspnet", 128, num_classes, aux)


@register_model("pspnet_r101")
def pspnet_r101(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """PSPNet-ResNet101: deep-stem R101, pyramid (1, 2, 3, 6) on 2048 channels, head width 512."""
    return _assemble("pspnet_r101", resnet101_backbone(output_stride), "pspnet", 512, num_classes, aux)


@register_model("pspnet_mbv2")
def pspnet_mbv2(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """PSPNet-MobileNetV2: pyramid (1, 2, 3, 6) on 320 channels, head width 128, no aux head."""
    return _assemble("pspnet_mbv2", mobilenet_v2_backbone(output_stride), "pspnet", 128, num_classes, aux)


# ---------------------------------------------------------------- torchvision-stem variants


@register_model("deeplabv3_tv_r18")
def deeplabv3_tv_r18(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """``deeplabv3_r18`` with torchvision's 7x7 stem (torchvision ``resnet18`` weights fit)."""
    backbone = resnet18_backbone(output_stride, stem="plain")
    return _assemble("deeplabv3_tv_r18", backbone, "deeplabv3", 128, num_classes, aux)


@register_model("deeplabv3_tv_r101")
def deeplabv3_tv_r101(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """``deeplabv3_r101`` with torchvision's 7x7 stem (torchvision ``resnet101`` weights fit)."""
    backbone = resnet101_backbone(output_stride, stem="plain")
    return _assemble("deeplabv3_tv_r101", backbone, "deeplabv3", 256, num_classes, aux)


@register_model("pspnet_tv_r18")
def pspnet_tv_r18(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """``pspnet_r18`` with torchvision's 7x7 stem (torchvision ``resnet18`` weights fit)."""
    return _assemble("pspnet_tv_r18", resnet18_backbone(output_stride, stem="plain"), "pspnet", 128, num_classes, aux)


@register_model("pspnet_tv_r101")
def pspnet_tv_r101(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """``pspnet_r101`` with torchvision's 7x7 stem (torchvision ``resnet101`` weights fit)."""
    backbone = resnet101_backbone(output_stride, stem="plain")
    return _assemble("pspnet_tv_r101", backbone, "pspnet", 512, num_classes, aux)


# ---------------------------------------------------------------- tiny CPU variants


@register_model("deeplabv3_tiny_r18")
def deeplabv3_tiny_r18(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """Tiny DeepLabV3-ResNet18 (CPU student)."""
    return _assemble("deeplabv3_tiny_r18", _tiny_r18(output_stride), "deeplabv3", 48, num_classes, aux)


@register_model("deeplabv3_tiny_r101")
def deeplabv3_tiny_r101(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """Tiny DeepLabV3-ResNet101 (CPU teacher)."""
    return _assemble("deeplabv3_tiny_r101", _tiny_r101(output_stride), "deeplabv3", 96, num_classes, aux)


@register_model("deeplabv3_tiny_mbv2")
def deeplabv3_tiny_mbv2(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """Tiny DeepLabV3-MobileNetV2 (width 0.5), no aux head."""
    return _assemble("deeplabv3_tiny_mbv2", tiny_mobilenet_v2_backbone(output_stride), "deeplabv3", 48, num_classes, aux)


@register_model("pspnet_tiny_r18")
def pspnet_tiny_r18(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """Tiny PSPNet-ResNet18 (CPU student)."""
    return _assemble("pspnet_tiny_r18", _tiny_r18(output_stride), "pspnet", 48, num_classes, aux)


@register_model("pspnet_tiny_r101")
def pspnet_tiny_r101(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """Tiny PSPNet-ResNet101 (CPU teacher)."""
    return _assemble("pspnet_tiny_r101", _tiny_r101(output_stride), "pspnet", 96, num_classes, aux)


@register_model("pspnet_tiny_mbv2")
def pspnet_tiny_mbv2(num_classes: int, *, output_stride: int = 8, aux: bool = True) -> SegmentationModel:
    """Tiny PSPNet-MobileNetV2 (width 0.5), no aux head."""
    return _assemble("pspnet_tiny_mbv2", tiny_mobilenet_v2_backbone(output_stride), "pspnet", 48, num_classes, aux)


# ---------------------------------------------------------------- entry point


def build_model(
    arch: str,
    num_classes: int,
    *,
    output_stride: int = 8,
    aux: bool = True,
    pretrained: str = "",
) -> SegmentationModel:
    """Build a registered model; ``pretrained`` is a local ImageNet backbone file (the reference
    code's or torchvision's, see :mod:`segdistill.models.weights`) or a directory of reference files.

    Raises ValueError for an unknown ``arch`` (listing the known ones), a bad ``num_classes`` or
    ``output_stride`` (4, 8 or 16), or weights that do not fit (``WeightsError``, a ValueError);
    FileNotFoundError when ``pretrained`` names a missing file.
    """
    factory = get_factory(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} for a segmentation model, got {output_stride}")
    model = factory(num_classes, output_stride=output_stride, aux=aux)
    if pretrained:
        load_backbone_weights(model, pretrained)
    return model  # type: ignore[return-value]


__all__ = ["ASPP_RATES_OS8", "MODELS", "OUTPUT_STRIDES", "PSP_BINS", "aspp_rates", "build_model"]
