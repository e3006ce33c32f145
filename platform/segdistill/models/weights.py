"""Loading ImageNet backbone weights from local torchvision-format state dicts.

There is no internet on the development machines, so weights are never downloaded: the user
supplies e.g. the file ``torch.save(torchvision.models.resnet18(weights=...).state_dict(), path)``
would produce. The classification head (``fc.*`` for ResNets; ``classifier.*`` and the dropped
1280-channel conv ``features.18.*`` for MobileNetV2) is ignored; everything else must match the
backbone exactly. The reference code's deep-stem ImageNet weights do not fit (see backbones.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

_SHOW = 5  # offending keys named in an error message


def _first(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_backbone_weights(model: nn.Module, path: str | PathLike[str]) -> None:
    """Load a torchvision-format state dict into ``model.backbone`` (strictly; never partially).

    Raises FileNotFoundError if ``path`` does not exist; ValueError if the model has no
    torchvision counterpart (tiny variants), the file is not a state dict, or any backbone key is
    missing, unexpected, or of the wrong shape (the message names the first few offending keys).
    BatchNorm ``num_batches_tracked`` buffers may be absent (old torchvision files lack them).
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "ignored_weight_prefixes"):
        raise ValueError(f"{type(model).__name__} has no segdistill backbone to load weights into")
    arch = getattr(model, "arch", type(model).__name__)
    if backbone.torchvision_arch is None:
        raise ValueError(f"{arch} has no torchvision counterpart: pretrained weights are only for paper models")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"backbone weights not found: {file}")

    loaded = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{file} is not a state dict of tensors (got {type(loaded).__name__})")
    prefixes: tuple[str, ...] = backbone.ignored_weight_prefixes
    state = {k: v for k, v in loaded.items() if not k.startswith(prefixes)}

    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"weights in {file} do not fit the {backbone.torchvision_arch} backbone of {arch}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
            if all(k.startswith("backbone.") for k in unexpected):
                parts.append("(this looks like a segdistill model checkpoint, not a torchvision state dict)")
        raise ValueError(" ".join(parts))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(f"weights in {file} have {len(mismatched)} shape mismatches for {arch}: {_first(mismatched)}")
    backbone.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent here


__all__ = ["load_backbone_weights"]
