"""Parameter and FLOP counts (the "Params" and "FLOPs" columns of paper Tables II-III).

``count_flops`` counts forward FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, which counts
a multiply-add as 2 FLOPs (convolutions and matmuls only; BN, ReLU, pooling and interpolation are
free). The paper's FLOPs follow the multiply-add ("MACs") convention of its codebase, so compare
``count_flops(...) / 2`` with the paper: e.g. DeepLab-R101 at 512x512 is 384.7G in Table II.
The model is built on the ``meta`` device, so counting costs no memory and takes well under a
second even for ResNet-101 at 512x512.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segdistill.models.zoo import build_model


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(
    arch: str,
    num_classes: int,
    size: int | tuple[int, int] = 512,
    output_stride: int = 8,
    *,
    aux: bool = False,
) -> float:
    """Forward FLOPs (multiply-add = 2) of one (1, 3, H, W) image; ``size`` is H = W or (H, W).

    Inference cost by default: the auxiliary head, dropped at test time, is excluded (``aux=True``
    includes it).
    """
    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        model = build_model(arch, num_classes, output_stride=output_stride, aux=aux)
        x = torch.empty(1, 3, h, w)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


__all__ = ["count_flops", "count_params"]
