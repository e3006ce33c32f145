"""Reading weight files, and loading ImageNet backbone weights from local files.

There is no internet on the development machines, so weights are never downloaded: the user
supplies local files (``model.pretrained``). Two kinds of ImageNet backbone file fit:

- the reference code's (docs/REFERENCE.md "Checkpoint files"): ``resnet18-imagenet.pth``,
  ``resnet101-imagenet.pth`` (deep-stem ResNets: they fit the paper models ``*_r18`` / ``*_r101``)
  and ``mobilenetv2-imagenet.pth`` (fits ``*_mbv2``), with or without their classifier
  (``fc.*``; ``features.18.*`` / ``classifier.*``);
- torchvision's (``torch.save(torchvision.models.resnet18(weights=...).state_dict(), path)``): ResNets
  fit the torchvision-stem models ``*_tv_r18`` / ``*_tv_r101``, MobileNetV2 fits ``*_mbv2``; the
  classification head (``fc.*``; ``classifier.*`` and the dropped 1280-channel ``features.18.*``)
  is ignored.

``model.pretrained`` may also name a directory holding the reference files under their released
names; the one for the model's backbone is used. Everything else in a file must match the backbone
exactly (BatchNorm ``num_batches_tracked`` may be absent); a file that does not fit raises
:class:`WeightsError` naming the file and the first keys / shapes that do not fit, before anything
is loaded (never a partial load).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

from segdistill.models.backbones import MobileNetV2Backbone, ResNetBackbone
from segdistill.models.reference import backbone_file_key_map, looks_like_reference

_SHOW = 5  # offending keys named in an error message
_OPTIONAL = ("num_batches_tracked",)  # buffers a file may lack (old torchvision files; the reference loaders)
# MobileNetV2 blocks: torchvision nests conv-BN-ReLU6 triples (features.1.conv.0.0.weight), the
# reference numbers the leaves flat (features.1.conv.0.weight)
_NESTED_MBV2_KEY = re.compile(r"^features\.\d+\.conv\.\d+\.\d+\.")
_FLAT_MBV2_KEY = re.compile(r"^features\.\d+\.conv\.\d+\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
BACKBONE_FORMATS = ("reference", "torchvision")


class WeightsError(ValueError):
    """A weights file that cannot be used: not readable, not a state dict, or keys / shapes that do
    not fit. The message names the file and what does not fit."""


def _first(items: list[str]) -> str:
    more = f" ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def read_weights_file(path: str | PathLike[str], *, trusted_pickle: bool = False) -> object:
    """``torch.load(path, map_location="cpu")`` with clear errors.

    Loads with ``weights_only=True`` (tensors, containers, numbers, strings: every state dict and
    segdistill ``model.pt``); with ``trusted_pickle`` a file that needs more (segdistill's training
    ``state.pt`` holds numpy RNG states) is loaded with ``weights_only=False``. Raises
    FileNotFoundError, or :class:`WeightsError` for a truncated / foreign file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights file not found: {file}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trusted_pickle:
            raise WeightsError(f"{file} holds Python objects other than tensors and containers (a pickled "
                               f"nn.Module? save model.state_dict() instead): {_one_line(exc)}") from None
        first = exc
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise WeightsError(f"{file} cannot be read as a torch.save file (truncated, or not a checkpoint?): "
                           f"{type(exc).__name__}: {_one_line(exc)}") from None
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - e.g. a pickled model of a class that is not importable here
        raise WeightsError(f"{file} is not a state dict this code can read ({type(exc).__name__}: {_one_line(exc)}; "
                           f"with weights_only=True: {_one_line(first)}); save model.state_dict() instead") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def as_state_dict(obj: object, file: str | PathLike[str]) -> dict[str, Tensor]:
    """``obj`` as a ``{str: Tensor}`` state dict, or :class:`WeightsError` naming what it is instead.

    A file whose every key carries DDP's ``module.`` prefix is refused with the fix."""
    if isinstance(obj, nn.Module):
        raise WeightsError(f"{file} holds a pickled {type(obj).__name__} object, not a state dict; save "
                           "model.state_dict() instead")
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{file} is not a state dict: it holds {_describe(obj)}")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{file} is not a state dict of tensors: {len(bad)} entries are not tensors: {_first(bad)}")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):
        raise WeightsError(f"{file}: every key carries the 'module.' prefix of a DDP-wrapped model (e.g. {keys[0]!r}); "
                           "save model.module.state_dict(), or strip the prefix: "
                           "{k.removeprefix('module.'): v for k, v in state.items()}")
    return dict(obj)


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return "an empty mapping" if not obj else f"a mapping with keys {_first([repr(k) for k in obj])}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def check_fit(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], *, file: str | PathLike[str],
              target: str, hint: str = "") -> None:
    """Raise :class:`WeightsError` unless ``state`` has exactly ``expected``'s keys (``num_batches_tracked``
    may be absent) with the same shapes; the message names the first missing, unexpected and
    mismatched keys. ``target`` says what was expected ("the resnet18 backbone of deeplabv3_tv_r18")."""
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {_first(mismatched)}")
    raise WeightsError(f"weights in {file} do not fit {target}: " + "; ".join(parts) + (f" {hint}" if hint else ""))


# ---------------------------------------------------------------- backbone files


def _backbone_of(model: nn.Module) -> ResNetBackbone | MobileNetV2Backbone:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, (ResNetBackbone, MobileNetV2Backbone)):
        raise ValueError(f"{type(model).__name__} has no segdistill backbone to load weights into")
    arch = getattr(model, "arch", type(model).__name__)
    if backbone.torchvision_arch is None and backbone.reference_file is None:
        raise ValueError(f"{arch} has no ImageNet counterpart (a tiny CPU variant): pretrained weights are only "
                         "for paper models")
    return backbone


def backbone_weights_file(model: nn.Module, path: str | PathLike[str]) -> Path:
    """The file ``model.pretrained=path`` names for ``model``: ``path`` itself, or for a directory the
    reference file of the model's backbone inside it (e.g. ``<dir>/resnet18-imagenet.pth``)."""
    backbone = _backbone_of(model)
    p = Path(path).expanduser()
    if p.is_dir():
        if backbone.reference_file is None:
            raise FileNotFoundError(f"model.pretrained={str(path)!r} is a directory, but {model.arch} (torchvision stem) "
                                    "has no reference-code file name; give the torchvision file itself")
        p = p / backbone.reference_file
        if not p.is_file():
            raise FileNotFoundError(f"backbone weights not found: {p} (model.pretrained is a directory: it must hold "
                                    f"the reference code's {backbone.reference_file} for {model.arch})")
    elif not p.is_file():
        raise FileNotFoundError(f"backbone weights not found: {p}")
    return p


def _resnet_hint(backbone: ResNetBackbone, state: Mapping[str, Tensor], arch: str) -> str:
    conv1 = state.get("conv1.weight")
    if conv1 is None:
        return ""
    if tuple(conv1.shape[-2:]) == (7, 7) and backbone.stem == "deep":
        alt = arch.replace("_r", "_tv_r", 1)
        return (f"(the file is a torchvision-format ResNet with the 7x7 stem: it fits the torchvision-stem model "
                f"{alt}, not the reference's deep-stem {arch}, which takes the reference's {backbone.reference_file})")
    if tuple(conv1.shape[-2:]) == (3, 3) and "conv3.weight" in state and backbone.stem == "plain":
        alt = arch.replace("_tv_", "_", 1)
        return (f"(the file is a reference deep-stem ResNet (resnet*-imagenet.pth): it fits {alt}, not the "
                f"torchvision-stem {arch})")
    return ""


def backbone_state(model: nn.Module, path: str | PathLike[str]) -> tuple[dict[str, Tensor], str, Path]:
    """Read and check an ImageNet backbone file for ``model`` without loading it.

    Returns ``(state under the backbone's own keys, format, file)`` with format "reference" or
    "torchvision" (which preprocessing the weights expect; docs/REFERENCE.md). Raises
    FileNotFoundError, ValueError for a model without ImageNet weights, :class:`WeightsError` for a
    file that does not fit (naming the file and the first offending keys / shapes)."""
    backbone = _backbone_of(model)
    arch = getattr(model, "arch", type(model).__name__)
    file = backbone_weights_file(model, path)
    state = as_state_dict(read_weights_file(file), file)
    if looks_like_reference(state) or any(k.startswith(("backbone.", "head.")) for k in state):
        raise WeightsError(f"{file} is a whole segmentation model's state dict (keys {_first(list(state)[:2])}), not "
                           "an ImageNet backbone file; model.pretrained takes backbone files "
                           "(resnet18-imagenet.pth, a torchvision state dict); a teacher goes to distill.teacher_checkpoint")
    expected = backbone.state_dict()
    if isinstance(backbone, ResNetBackbone):
        fmt = "reference" if backbone.stem == "deep" else "torchvision"
        state = {k: v for k, v in state.items() if not k.startswith(backbone.ignored_weight_prefixes)}
        what = backbone.reference_file if fmt == "reference" else backbone.torchvision_arch
        check_fit(expected, state, file=file, target=f"the {what} backbone of {arch}",
                  hint=_resnet_hint(backbone, state, arch))
        return state, fmt, file
    # MobileNetV2: the reference numbers each block's leaves flat, torchvision nests them
    state = {k: v for k, v in state.items() if not k.startswith(backbone.ignored_weight_prefixes)}
    if not any(_NESTED_MBV2_KEY.match(k) for k in state) and any(_FLAT_MBV2_KEY.match(k) for k in state):
        to_file = backbone_file_key_map(backbone)
        from_file = {v: k for k, v in to_file.items()}
        renamed = {from_file.get(k, f"<reference key {k}>"): v for k, v in state.items()}
        expected_ref = {to_file[k]: v for k, v in expected.items()}
        check_fit(expected_ref, state, file=file, target=f"the reference MobileNetV2 backbone of {arch}")
        return renamed, "reference", file
    check_fit(expected, state, file=file, target=f"the {backbone.torchvision_arch} backbone of {arch}")
    return state, "torchvision", file


def load_backbone_weights(model: nn.Module, path: str | PathLike[str]) -> str:
    """Load an ImageNet backbone file (or the one in a directory) into ``model.backbone``, strictly
    and never partially; returns its format ("reference" or "torchvision"). Errors: see
    :func:`backbone_state`."""
    state, fmt, _ = backbone_state(model, path)
    model.backbone.load_state_dict(state, strict=False)  # checked: only num_batches_tracked may be absent
    return fmt


__all__ = ["BACKBONE_FORMATS", "WeightsError", "as_state_dict", "backbone_state", "backbone_weights_file", "check_fit",
           "load_backbone_weights", "read_weights_file"]
