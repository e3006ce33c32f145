"""Model files out: the reference code's layout, and a standalone ``torch.export`` program.

- :func:`export_reference` writes ``torch.save(state_dict)`` with the reference's keys in its order
  (``pretrained.*``, ``head.*``, ``auxlayer.*``; :mod:`segdistill.models.reference`), so the
  reference's own ``eval.py --pretrained FILE`` scores a model trained here. Reading such a file back
  (``segdistill.checkpoints.load_model``) and exporting it again gives the same file content: the
  same keys, order, dtypes and values, bit for bit.
- :func:`export_program` writes a ``torch.export`` ExportedProgram (``.pt2``) that a plain PyTorch
  user runs without segdistill::

      ep = torch.export.load("model.pt2")
      logits = ep.module()(image.float())  # image: (B, 3, H, W) RGB in [0, 255]; logits: (B, C, H, W)

  The program includes the input preprocessing (channel order, scale, mean, std) and the evaluation
  upsampling (``align_corners``) the model was trained with, runs the model in eval mode and returns
  full-resolution logits (argmax over dim 1 is the prediction). Batch, height and width are dynamic
  (H, W >= 32). A JSON description (architecture, classes, preprocessing, input/output) is stored in
  the file (``extra_files={"segdistill.json": ""}`` on ``torch.export.load``).

``segdistill export`` (cli.py) is the command-line verb for both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.transforms import Preprocessing
from .models.reference import to_reference_state_dict

EXPORT_FORMAT = "segdistill-export-v1"
METADATA_FILE = "segdistill.json"
MIN_SIDE = 32  # smallest input side the exported program accepts (PSPNet's 6x6 bins need >= 1 pixel at OS 8)
MAX_SIDE = 8192


def _atomic_write(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix torch.export expects
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_reference(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights as the reference code's checkpoint (``torch.save(state_dict)``).

    ``model`` is one of the six paper models; its aux head, if built, is written as ``auxlayer.*``.
    The reference's ``eval.py`` builds its ResNet models with the aux head and loads strictly, so a
    ResNet model trained without one (``model.aux=false``) gives a file it refuses."""
    state = {k: v.detach().cpu() for k, v in to_reference_state_dict(model).items()}
    return _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


class StandaloneSegmenter(nn.Module):
    """RGB image in [0, 255] -> full-resolution logits: preprocessing, model, upsampling.

    forward: ``image`` float (B, 3, H, W) RGB in [0, 255] -> logits float32 (B, C, H, W)."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, *, align_corners: bool) -> None:
        super().__init__()
        self.model = model
        order = [0, 1, 2] if preprocessing.channel_order == "rgb" else [2, 1, 0]
        # the arithmetic of segdistill.data.Preprocessing: float32, or one float64 subtraction
        self.subtract_only = preprocessing.subtract_only
        dtype = torch.float64 if self.subtract_only else torch.float32
        self.register_buffer("mean", torch.tensor([preprocessing.mean[i] for i in order], dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([preprocessing.std[i] for i in order], dtype=dtype).view(1, 3, 1, 1))
        self.scale = float(preprocessing.scale)
        self.bgr = preprocessing.channel_order == "bgr"
        self.align_corners = bool(align_corners)

    def forward(self, image: Tensor) -> Tensor:
        x = image.to(torch.float32)  # (B, 3, H, W)
        if self.bgr:
            x = x.flip(1)
        if self.subtract_only:
            x = (x.to(torch.float64) - self.mean).to(torch.float32)
        else:
            x = (x / self.scale - self.mean) / self.std
        logits = self.model(x).logits  # (B, C, H/os, W/os)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def export_program(model: nn.Module, path: str | os.PathLike[str], *, preprocessing: Preprocessing,
                   align_corners: bool, metadata: Mapping[str, Any] | None = None,
                   example_size: tuple[int, int] = (64, 64)) -> Path:
    """Write ``model`` as a standalone ``torch.export`` program (``.pt2``, see the module docstring).

    ``preprocessing`` / ``align_corners``: what the model was trained with (``data.*`` preprocessing
    fields, ``model.eval_align_corners``). ``metadata`` is added to the stored JSON description."""
    was_training = model.training
    wrapper = StandaloneSegmenter(model, preprocessing, align_corners=align_corners).eval()
    example = torch.rand(2, 3, *example_size) * 255.0  # batch 2: a batch of 1 would be specialised
    dims = {"image": {0: torch.export.Dim("batch", min=1, max=4096),
                      2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                      3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}}
    try:
        with torch.no_grad():
            program = torch.export.export(wrapper, (example,), dynamic_shapes=dims)
    finally:
        model.train(was_training)
    description = {
        "format": EXPORT_FORMAT,
        "input": f"float32 (B, 3, H, W) RGB in [0, 255], {MIN_SIDE} <= H, W <= {MAX_SIDE}",
        "output": "float32 (B, C, H, W) logits at the input size; argmax(1) is the prediction",
        "preprocessing": {"channel_order": preprocessing.channel_order, "scale": preprocessing.scale,
                          "mean_rgb": list(preprocessing.mean), "std_rgb": list(preprocessing.std)},
        "upsampling": {"mode": "bilinear", "align_corners": bool(align_corners)},
        "torch": torch.__version__,
        **dict(metadata or {}),
    }
    text = json.dumps(description, indent=1, sort_keys=True)
    return _atomic_write(Path(path), lambda tmp: torch.export.save(program, tmp, extra_files={METADATA_FILE: text}))


def read_program_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON description stored in a ``.pt2`` written by :func:`export_program`."""
    extra = {METADATA_FILE: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[METADATA_FILE])


__all__ = ["EXPORT_FORMAT", "StandaloneSegmenter", "export_program", "export_reference", "read_program_metadata"]
