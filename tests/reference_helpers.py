"""Reference-code fixtures (tests/fixtures/reference/): the fill rule, layouts, inputs and goldens.

``fill_value`` implements FILL_RULE.md: every entry of a layout gets a value from its position, key,
shape and dtype alone, so a reference-format checkpoint can be rebuilt without the reference code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
TWO_PI = 2.0 * np.pi
# segdistill arch -> fixture name (layout_<name>.json, golden_<name>.npz)
SEG_FIXTURES = {"deeplabv3_r101": "deeplabv3_resnet101", "deeplabv3_r18": "deeplabv3_resnet18",
                "deeplabv3_mbv2": "deeplabv3_mobilenetv2", "pspnet_r18": "psp_resnet18"}
# segdistill arch whose backbone the file fits -> fixture name, and extras a released file may carry
BACKBONE_FIXTURES = {"deeplabv3_r18": "backbone_resnet18_v1s", "deeplabv3_r101": "backbone_resnet101_v1s",
                     "deeplabv3_mbv2": "backbone_mobilenetv2"}
REFERENCE_FILE_NAMES = {"backbone_resnet18_v1s": "resnet18-imagenet.pth", "backbone_resnet101_v1s": "resnet101-imagenet.pth",
                        "backbone_mobilenetv2": "mobilenetv2-imagenet.pth"}


def fill_value(i: int, key: str, shape: list[int] | tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Entry ``i`` of a layout (FILL_RULE.md), first matching rule wins:

    - ``*num_batches_tracked``: 0 (int64);
    - a weight with >= 2 dims: ``cos(2 pi q_k / 65521 + 1.3 i) * sqrt(2 / prod(shape[1:]))`` with the
      quadratic residue ``q_k = ((k^2 mod 65521) * 7919) mod 65521`` in exact int64 (full rank);
    - ``*running_var``: ``1 + 0.25 (1 + cos(0.11 k + i))``; ``*running_mean``: ``0.05 sin(0.13 k + i)``;
    - ``*weight``: ``1 + 0.1 cos(0.17 k + i)``; ``*bias``: ``0.02 sin(0.19 k + i)``;
    - anything else: ``0.01 cos(0.23 k + i)``;

    k = 0 .. n-1 in float64 (phases reach millions of radians), reshaped in C order, rounded once to
    ``dtype``."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    k = np.arange(n, dtype=np.float64)
    if len(shape) >= 2:
        idx = np.arange(n, dtype=np.int64)
        q = (idx * idx % 65521) * 7919 % 65521
        v = np.cos(TWO_PI * q / 65521.0 + 1.3 * i) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif key.endswith("running_var"):
        v = 1.0 + 0.25 * (1.0 + np.cos(0.11 * k + i))
    elif key.endswith("running_mean"):
        v = 0.05 * np.sin(0.13 * k + i)
    elif key.endswith("weight"):
        v = 1.0 + 0.1 * np.cos(0.17 * k + i)
    elif key.endswith("bias"):
        v = 0.02 * np.sin(0.19 * k + i)
    else:
        v = 0.01 * np.cos(0.23 * k + i)
    return v.reshape(shape).astype(dtype)


@lru_cache(maxsize=None)
def layout(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads((FIXTURES / f"layout_{name}.json").read_text()))


def fill_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The reference state dict of fixture ``name`` under the fill rule, in the layout's order."""
    return {e["key"]: torch.from_numpy(fill_value(i, e["key"], e["shape"], e["dtype"])) for i, e in enumerate(layout(name))}


@lru_cache(maxsize=None)
def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"golden_{name}.npz") as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=None)
def golden_index() -> dict[str, Any]:
    return json.loads((FIXTURES / "golden_index.json").read_text())


def inputs() -> dict[str, torch.Tensor]:
    """``{"64x64": (1, 3, 64, 64), "65x97": (1, 3, 65, 97)}`` float32, BGR minus the Caffe means."""
    with np.load(FIXTURES / "input.npz") as z:
        return {k.removeprefix("x_"): torch.from_numpy(z[k]) for k in z.files}


def rel_error(ours: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (the fixtures' per-array comparison)."""
    a = ours.detach().double().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours, dtype=np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    return float(np.abs(a - ref).max() / np.abs(ref).max())
