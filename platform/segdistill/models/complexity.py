"""Parameter and FLOP counts (the "Params" and "FLOPs" columns of paper Tables II-III).

``count_flops`` counts forward FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, which counts
a multiply-add as 2 FLOPs (convolutions and matmuls only; BN, ReLU, pooling and interpolation are
free): the true cost of the network.

The paper's "FLOPs" column is not that: it is the reference code's ``utils/flops.py`` counter
(``cal_multi_adds``), which counts multiply-adds of Conv2d layers with the output size computed as
``(H + 2 * padding - kernel) // stride + 1``, ignoring dilation. For a dilated 3x3 conv with padding
= dilation d the "output" is ``(H + 2d - 2)^2``: ASPP's rate-36 branch at 64x64 counts 4.4x its
cost. :func:`count_reference_macs` reproduces that counter: at 150 classes with the aux head it gives
DeepLabV3-R101 384.7G, DeepLabV3-R18 86.1G, DeepLabV3-MBV2 22.7G, PSPNet-R18 67.6G at 512x512
(Table II: 384.7, 86.0, 22.6, 67.6), where ``count_flops / 2`` (true multiply-adds, no aux head)
gives 248.4G, 64.1G, 13.4G, 60.5G. docs/REFERENCE.md "Complexity".

Models are built on the ``meta`` device, so counting costs no memory and takes well under a
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


def count_reference_macs(
    arch: str,
    num_classes: int,
    size: int | tuple[int, int] = 512,
    output_stride: int = 8,
    *,
    aux: bool = True,
) -> float:
    """Multiply-adds of one (1, 3, H, W) image as the reference code's ``cal_multi_adds`` counts them
    (the paper's "FLOPs"): every Conv2d's ``in * out * kh * kw * oh * ow / groups`` with
    ``oh = (h + 2 * padding - kh) // stride + 1`` (dilation ignored, so dilated convs are over-counted),
    nothing else. The aux head is included by default, as the reference counts the training model."""
    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        model = build_model(arch, num_classes, output_stride=output_stride, aux=aux)
        x = torch.empty(1, 3, h, w)
    model.eval()
    total = 0

    def hook(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        nonlocal total
        ih, iw = inputs[0].shape[-2:]
        oh = (ih + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1  # type: ignore[index]
        ow = (iw + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1  # type: ignore[index]
        total += conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1] * oh * ow // conv.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return float(total)


__all__ = ["count_flops", "count_params", "count_reference_macs"]
