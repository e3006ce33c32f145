"""Cross-entropy of bilinearly upsampled logits, without the full-resolution tensors.

Paper Eq. (1) upsamples the student's 1/8-resolution logits ``(B, C, h, w)`` bilinearly to the label
size ``(H, W)`` and takes the pixel-wise cross-entropy. Done literally (:func:`segmentation_ce`,
the trainer's default) this materialises ``(B, C, H, W)`` logits, their fp32 copy, the softmax, and in the
backward pass runs ``upsample_bilinear2d_backward``, a scatter with atomics: on an H200 that path
is ~40% of a distillation step (DESIGN.md, measured anchors).

Bilinear resizing (with ``align_corners`` False or True: ``model.ce_align_corners`` /
``model.aux_align_corners``) is linear and separable: ``up = A_H @ x @ A_W^T`` with fixed
interpolation matrices ``A_H (H, h)`` and ``A_W (W, w)`` (two non-zeros per row). So

    forward:  t = x @ A_W^T (low-res rows, full-res columns), then per block of output rows
              z = A_H[rows] @ t, loss += sum(logsumexp_c z - z[label]) over valid pixels
    backward: g_z = (softmax(z) - onehot(label)) * valid / n_valid per block (recomputed),
              g_t += A_H[rows]^T @ g_z, and finally g_x = g_t @ A_W

is the same loss and the same gradient as the literal path, computed with matmuls (tensor cores on
a GPU) and with only one block of full-resolution rows alive at a time, in fp32 for the softmax.
The mean is over non-ignored pixels, as ``F.cross_entropy(..., ignore_index)`` (NaN when every
pixel is ignored, as there).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def segmentation_ce(logits: Tensor, labels: Tensor, ignore_index: int = 255, *, align_corners: bool = False) -> Tensor:
    """Paper Eq. (1), literally: CE of logits (B, C, h, w) bilinearly upsampled to the labels (B, H, W)
    (``align_corners``: ``model.ce_align_corners`` / ``model.aux_align_corners``)."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)  # (B, C, H, W)
    return F.cross_entropy(up.float(), labels, ignore_index=ignore_index)

# Elements of one block of full-resolution logits (B * C * rows * W); 2^24 fp32 = 64 MiB.
BLOCK_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=64)
def _interp_matrix_cpu(out_size: int, in_size: int, align_corners: bool = False) -> Tensor:
    """``(out, in)`` float64 matrix of ``F.interpolate(mode='bilinear', align_corners=...)`` along one
    axis when the output size is given (PyTorch's ``area_pixel_compute_source_index``): source
    coordinate ``(i + 0.5) * in / out - 0.5`` clamped at 0 (``align_corners=False``), or
    ``i * (in - 1) / (out - 1)`` (True; 0 when ``out == 1``); the right neighbour clamped at ``in - 1``."""
    i = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        src = i * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(i)
    else:
        src = ((i + 0.5) * (in_size / out_size) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0.to(torch.float64)
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    m.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def interp_matrix(out_size: int, in_size: int, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, align_corners: bool = False) -> Tensor:
    """The bilinear resize matrix ``(out_size, in_size)`` on ``device`` (``align_corners`` as in
    ``F.interpolate``)."""
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be >= 1, got out={out_size}, in={in_size}")
    return _interp_matrix_cpu(out_size, in_size, bool(align_corners)).to(device=device, dtype=dtype)


def _rows_per_block(b: int, c: int, height: int, width: int, block_elements: int) -> int:
    return max(1, min(height, block_elements // max(1, b * c * width)))


class _UpsampledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, a_h: Tensor, a_w: Tensor,  # type: ignore[override]
                ignore_index: int, block_elements: int) -> Tensor:
        b, c, h, w = logits.shape
        height, width = labels.shape[-2:]
        x = logits.contiguous()
        t = torch.matmul(x, a_w.t())  # (B, C, h, W): columns upsampled, rows still low-res
        rows = _rows_per_block(b, c, height, width, block_elements)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        n_valid = torch.zeros((), dtype=torch.float32, device=logits.device)
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            z = torch.matmul(a_h[r0:r1], t).float()  # (B, C, r, W)
            y = labels[:, r0:r1]
            valid = y != ignore_index
            picked = z.gather(1, torch.where(valid, y, 0).unsqueeze(1)).squeeze(1)
            nll = torch.logsumexp(z, dim=1) - picked  # (B, r, W)
            total = total + torch.where(valid, nll, 0.0).sum()
            n_valid = n_valid + valid.sum()
        ctx.save_for_backward(t, labels, a_h, a_w, n_valid)
        ctx.ignore_index = ignore_index
        ctx.rows = rows
        ctx.low_shape = (b, c, h, w)
        ctx.in_dtype = logits.dtype
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        t, labels, a_h, a_w, n_valid = ctx.saved_tensors
        height = labels.shape[-2]
        scale = grad_out.float() / n_valid
        g_t = torch.zeros(t.shape, dtype=torch.float32, device=t.device)  # (B, C, h, W)
        a_h32 = a_h.float()
        for r0 in range(0, height, ctx.rows):
            r1 = min(height, r0 + ctx.rows)
            z = torch.matmul(a_h[r0:r1], t).float()  # recomputed: never stored at full resolution
            y = labels[:, r0:r1]
            valid = y != ctx.ignore_index
            g = torch.softmax(z, dim=1)
            g.scatter_add_(1, torch.where(valid, y, 0).unsqueeze(1), torch.full_like(g[:, :1], -1.0))
            g.mul_((valid.unsqueeze(1) * scale).to(g.dtype))
            g_t.add_(torch.matmul(a_h32[r0:r1].t(), g))
        g_x = torch.matmul(g_t.to(ctx.in_dtype), a_w.to(ctx.in_dtype))  # (B, C, h, w)
        return g_x, None, None, None, None, None


def upsampled_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255, *,
                            align_corners: bool = False, block_elements: int = BLOCK_ELEMENTS) -> Tensor:
    """Same value and gradient as ``F.cross_entropy(F.interpolate(logits, labels.shape[-2:], 'bilinear',
    align_corners=align_corners).float(), labels, ignore_index=ignore_index)``, computed block by block.

    ``logits (B, C, h, w)`` float/bf16, ``labels (B, H, W)`` int64 in ``[0, C)`` or ``ignore_index``.
    The interpolation matmuls run in the logits' dtype (bf16 under autocast, fp32 accumulation);
    log-softmax and the loss in fp32.
    """
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (B, C, h, w) and labels (B, H, W), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if block_elements < 1:
        raise ValueError(f"block_elements must be >= 1, got {block_elements}")
    height, width = labels.shape[-2:]
    dtype = logits.dtype if logits.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
    a_h = interp_matrix(height, logits.shape[-2], device=logits.device, dtype=dtype, align_corners=align_corners)
    a_w = interp_matrix(width, logits.shape[-1], device=logits.device, dtype=dtype, align_corners=align_corners)
    return _UpsampledCrossEntropy.apply(logits.to(dtype), labels, a_h, a_w, ignore_index, block_elements)
