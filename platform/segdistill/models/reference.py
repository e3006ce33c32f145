"""The reference code's state-dict layout (HWD / CIRKD, docs/REFERENCE.md "Checkpoint files").

The paper models are the reference's networks layer for layer; only module names differ. This module
maps every state-dict key of a segdistill paper model to the reference's key and back, so reference
files load directly and trained models export to files the reference's own ``eval.py`` reads:

| segdistill | reference |
|---|---|
| ``backbone.<k>`` (deep-stem ResNet) | ``pretrained.<k>`` (same names: ``conv1``, ``bn1`` .. ``layer4``) |
| ``backbone.features.0.<j>`` (MobileNetV2) | ``pretrained.net.features.0.<j>`` |
| ``backbone.features.<i>.conv.<j>.<k>`` / ``.conv.<j>`` | ``pretrained.net.features.<i>.conv.<n>``: the block's leaves numbered in order (torchvision nests conv-BN-ReLU6 triples, the reference lists them flat) |
| ``head.aspp.b0.<j>``, ``head.aspp.project.<j>`` | the same |
| ``head.aspp.b{1,2,3}.<j>`` | ``head.aspp.b{1,2,3}.block.<j>`` |
| ``head.aspp.b4.conv.<j>`` | ``head.aspp.b4.gap.<j+1>`` (``gap.0`` is the pooling) |
| ``head.block.0.<j>`` (3x3 conv, BN) | ``head.block.<j>`` |
| ``head.classifier`` (DeepLabV3) | ``head.block.4`` (after ReLU and Dropout at 2, 3) |
| ``head.psp.stages.<i>.1.<j>`` | ``head.psp.conv<i+1>.<j>`` |
| ``head.classifier`` (PSPNet) | ``head.classifier`` |
| ``aux_head.block.0.<j>``, ``aux_head.classifier`` | ``auxlayer.block.<j>``, ``auxlayer.block.4`` |

The key order of :func:`to_reference_state_dict` is the reference's ``state_dict()`` order (both
networks register their modules in the same order; tests/test_reference.py checks it against the
reference layouts). Reference ImageNet backbone files hold the backbone's keys without the
``pretrained.`` / ``pretrained.net.`` prefix (docs/REFERENCE.md "Checkpoint files").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from segdistill.models.backbones import MobileNetV2Backbone, ResNetBackbone
from segdistill.models.heads import DeepLabV3Head, PSPHead

# segdistill arch -> the reference's get_segmentation_model(model=..., backbone=...) arguments
REFERENCE_MODELS: dict[str, tuple[str, str]] = {
    "deeplabv3_r18": ("deeplabv3", "resnet18"),
    "deeplabv3_r101": ("deeplabv3", "resnet101"),
    "deeplabv3_mbv2": ("deeplabv3_mobile", "mobilenetv2"),
    "pspnet_r18": ("psp", "resnet18"),
    "pspnet_r101": ("psp", "resnet101"),
    "pspnet_mbv2": ("psp_mobile", "mobilenetv2"),
}
# the reference head widths (deeplabv3.py / pspnet.py / *_mobile.py): a model with other widths has no
# reference counterpart even if its module tree matches
_REFERENCE_WIDTHS: dict[str, int] = {"deeplabv3_r18": 128, "deeplabv3_r101": 256, "deeplabv3_mbv2": 128,
                                     "pspnet_r18": 128, "pspnet_r101": 512, "pspnet_mbv2": 128}
_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def has_reference_layout(model: nn.Module) -> bool:
    """True for the six paper models (deep-stem ResNet or width-1 MobileNetV2, reference head widths)."""
    arch = getattr(model, "arch", None)
    backbone = getattr(model, "backbone", None)
    if arch not in REFERENCE_MODELS or getattr(model.head, "width", None) != _REFERENCE_WIDTHS[arch]:
        return False
    if isinstance(backbone, ResNetBackbone):
        return backbone.stem == "deep"
    return isinstance(backbone, MobileNetV2Backbone) and backbone.reference_file is not None


def _require_reference_layout(model: nn.Module) -> None:
    if not has_reference_layout(model):
        arch = getattr(model, "arch", type(model).__name__)
        raise ValueError(f"{arch} has no counterpart in the reference code; the reference layout exists for "
                         f"{sorted(REFERENCE_MODELS)}")


def mobilenet_block_map(block: nn.Module) -> dict[str, str]:
    """Relative module name -> the reference's flat index inside one MobileNetV2 block's ``conv``.

    torchvision: ``conv = [ConvBNReLU6(pw), ConvBNReLU6(dw), Conv2d(pw-linear), BN]`` (``0.0, 0.1,
    0.2, 1.0, 1.1, 1.2, 2, 3``); reference: the same eight leaves in one flat Sequential (``0 .. 7``).
    Blocks with expansion 1 have no first triple (``0.0 .. 2`` -> ``0 .. 4``)."""
    out: dict[str, str] = {}
    flat = 0
    for j, child in block.conv.named_children():
        if isinstance(child, nn.Sequential):
            for k, _ in child.named_children():
                out[f"{j}.{k}"] = str(flat)
                flat += 1
        else:
            out[j] = str(flat)
            flat += 1
    return out


def _mobilenet_module_map(backbone: MobileNetV2Backbone) -> dict[str, str]:
    """Module path inside the backbone (``features.3.conv.1.0``) -> the reference's (``features.3.conv.3``)."""
    out: dict[str, str] = {}
    for i, block in enumerate(backbone.features):
        if i == 0:  # the stem: Conv2dNormActivation (conv, BN, ReLU6) in both
            for k, _ in block.named_children():
                out[f"features.0.{k}"] = f"features.0.{k}"
            continue
        for ours, ref in mobilenet_block_map(block).items():
            out[f"features.{i}.conv.{ours}"] = f"features.{i}.conv.{ref}"
    return out


_DEEPLAB_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^aspp\.b([123])\.(\d+)$"), r"aspp.b\1.block.\2"),
    (re.compile(r"^aspp\.(b0|project)\.(\d+)$"), r"aspp.\1.\2"),
    (re.compile(r"^block\.0\.(\d+)$"), r"block.\1"),
    (re.compile(r"^classifier$"), "block.4"),
)
_PSP_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^block\.0\.(\d+)$"), r"block.\1"),
    (re.compile(r"^classifier$"), "classifier"),
)
_FCN_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^block\.0\.(\d+)$"), r"block.\1"),
    (re.compile(r"^classifier$"), "block.4"),
)


def _head_module(kind: type, path: str) -> str:
    """A head's relative module path -> the reference's (module docstring table)."""
    if kind is DeepLabV3Head:
        m = re.match(r"^aspp\.b4\.conv\.(\d+)$", path)
        if m:
            return f"aspp.b4.gap.{int(m.group(1)) + 1}"
        rules = _DEEPLAB_RULES
    elif kind is PSPHead:
        m = re.match(r"^psp\.stages\.(\d+)\.1\.(\d+)$", path)
        if m:
            return f"psp.conv{int(m.group(1)) + 1}.{m.group(2)}"
        rules = _PSP_RULES
    else:
        rules = _FCN_RULES
    for pattern, repl in rules:
        if pattern.match(path):
            return pattern.sub(repl, path)
    raise KeyError(f"no reference name for head module {path!r} of {kind.__name__}")


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    if leaf not in _LEAVES:
        raise KeyError(f"unexpected state-dict entry {key!r}")
    return module, leaf


def reference_key_map(model: nn.Module) -> dict[str, str]:
    """``{segdistill key: reference key}`` for every entry of ``model.state_dict()``, in its order.

    ``model`` is one of the six paper models (:data:`REFERENCE_MODELS`); other models raise ValueError.
    """
    _require_reference_layout(model)
    backbone = model.backbone
    mbv2 = _mobilenet_module_map(backbone) if isinstance(backbone, MobileNetV2Backbone) else None
    out: dict[str, str] = {}
    for key in model.state_dict():
        module, leaf = _split(key)
        part, _, rest = module.partition(".")
        if part == "backbone":
            ref = f"pretrained.{rest}" if mbv2 is None else f"pretrained.net.{mbv2[rest]}"
        elif part == "head":
            ref = f"head.{_head_module(type(model.head), rest)}"
        elif part == "aux_head":
            ref = f"auxlayer.{_head_module(type(model.aux_head), rest)}"
        else:
            raise KeyError(f"unexpected state-dict entry {key!r}")
        out[key] = f"{ref}.{leaf}"
    if len(set(out.values())) != len(out):
        raise AssertionError(f"the reference key map of {model.arch} is not one to one")
    return out


def backbone_file_key_map(backbone: nn.Module) -> dict[str, str]:
    """``{backbone key: key in a reference ImageNet file}`` (``resnet18-imagenet.pth`` etc.): the same
    names for deep-stem ResNets; the flat block numbering for MobileNetV2 (no ``net.`` prefix)."""
    if isinstance(backbone, ResNetBackbone) and backbone.stem == "deep":
        return {k: k for k in backbone.state_dict()}
    if isinstance(backbone, MobileNetV2Backbone) and backbone.reference_file is not None:
        modules = _mobilenet_module_map(backbone)
        out = {}
        for key in backbone.state_dict():
            module, leaf = _split(key)
            out[key] = f"{modules[module]}.{leaf}"
        return out
    raise ValueError(f"{type(backbone).__name__} (stem {getattr(backbone, 'stem', '-')!r}) has no reference-code "
                     "ImageNet file")


def to_reference_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` under the reference's keys and in its order (the tensors themselves,
    detached; move them to the CPU before ``torch.save`` if needed)."""
    mapping = reference_key_map(model)
    state = model.state_dict()
    return {mapping[k]: state[k] for k in mapping}


def reference_num_classes(state: Mapping[str, Tensor]) -> int | None:
    """The class count of a reference segmentation state dict (its classifier's bias), or None."""
    for key in ("head.block.4.bias", "head.classifier.bias"):
        bias = state.get(key)
        if isinstance(bias, Tensor) and bias.ndim == 1:
            return int(bias.shape[0])
    return None


def looks_like_reference(state: Mapping[str, object]) -> bool:
    """A reference segmentation checkpoint: ``pretrained.*`` and ``head.*`` keys, nothing else but
    ``auxlayer.*``."""
    keys = list(state)
    return (any(k.startswith("pretrained.") for k in keys) and any(k.startswith("head.") for k in keys)
            and all(k.startswith(("pretrained.", "head.", "auxlayer.")) for k in keys))


__all__ = [
    "REFERENCE_MODELS",
    "backbone_file_key_map",
    "has_reference_layout",
    "looks_like_reference",
    "mobilenet_block_map",
    "reference_key_map",
    "reference_num_classes",
    "to_reference_state_dict",
]
