"""Segmentation networks for the HWD study (docs/CONTRACTS.md, "models").

``build_model(arch, num_classes, output_stride=8, aux=True, pretrained="")`` builds any name in
``MODELS``: the paper's ``{deeplabv3,pspnet}_{r18,r101,mbv2}`` and the CPU-sized
``{deeplabv3,pspnet}_tiny_{r18,r101,mbv2}``, and the torchvision-stem ``{deeplabv3,pspnet}_tv_{r18,r101}``.
``model(x)`` returns ``SegOutput(logits, aux, features)``. ``segdistill.models.reference`` maps the
paper models' state dicts to the reference code's layout and back.

``MODELS`` is filled by the ``@register_model`` decorators in ``zoo``, imported explicitly below.
"""

from segdistill.models.backbones import MobileNetV2Backbone, ResNetBackbone, stage_dilations
from segdistill.models.complexity import count_flops, count_params, count_reference_macs
from segdistill.models.heads import ASPP, DeepLabV3Head, FCNHead, PSPHead, PyramidPooling
from segdistill.models.registry import MODELS, ModelFactory, get_factory, register_model
from segdistill.models.segmentor import FEATURE_NAMES, SegmentationModel, SegOutput
from segdistill.models.reference import REFERENCE_MODELS, reference_key_map, to_reference_state_dict
from segdistill.models.weights import WeightsError, load_backbone_weights
from segdistill.models.zoo import aspp_rates, build_model

__all__ = [
    "ASPP",
    "FEATURE_NAMES",
    "MODELS",
    "DeepLabV3Head",
    "FCNHead",
    "MobileNetV2Backbone",
    "ModelFactory",
    "PSPHead",
    "PyramidPooling",
    "REFERENCE_MODELS",
    "ResNetBackbone",
    "SegOutput",
    "SegmentationModel",
    "WeightsError",
    "aspp_rates",
    "build_model",
    "count_flops",
    "count_params",
    "count_reference_macs",
    "get_factory",
    "load_backbone_weights",
    "reference_key_map",
    "register_model",
    "stage_dilations",
    "to_reference_state_dict",
]
