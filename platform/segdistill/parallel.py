"""Data-parallel helpers: SyncBatchNorm for the student, and a differentiable all-gather for the
batch-coupled distillation terms.

- :func:`convert_sync_batchnorm`: the student's BatchNorm layers normalise over every worker's
  images (``optim.sync_bn``), as the reference's 4-GPU runs did. On CUDA it is
  ``torch.nn.SyncBatchNorm``; on CPU (gloo; torch's SyncBatchNorm refuses CPU tensors) it is
  :class:`CPUSyncBatchNorm`, the same statistics through a differentiable all-reduce. State-dict
  keys stay those of ``BatchNorm2d``, so checkpoints are interchangeable.
- :func:`gather_batch`: concatenate a (B, ...) tensor from every rank along the batch, with a
  backward that all-reduces the gradient and returns this rank's slice; a loss computed from the
  gathered tensors on every rank then has, after DDP's gradient averaging, exactly the gradient of
  that loss computed on the whole batch in one process (``distill.batch_coupling = 'global'``).

Nothing here imports Ray; without an initialised process group of more than one rank every helper
is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = torch.tensor([x.shape[0]], device=x.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        if len(set(counts)) != 1:
            raise ValueError(f"gather_batch needs the same batch on every rank, got {counts}")
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's slice
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_batch(x: Tensor) -> Tensor:
    """(B, ...) on each of W ranks -> (W*B, ...) in rank order; differentiable (see the module
    docstring); the identity on one rank. A tensor without grad is gathered without a graph."""
    if world_size() <= 1:
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)
    return _GatherBatch.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over every rank's batch (sum and sum of squares
    all-reduced, differentiably), for CPU process groups. Evaluation and single-rank training are
    plain ``BatchNorm2d``. Running statistics follow BatchNorm's update (unbiased variance)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        n_local = torch.tensor([xf.numel() / c], dtype=xf.dtype, device=xf.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), n_local])  # (2C + 1,)
        stats = _AllReduceSum.apply(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)  # biased, for normalising
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean))
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var))
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        out.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm normalising over all ranks' images (see the module docstring)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cpu_sync(model)


def count_sync_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.SyncBatchNorm, CPUSyncBatchNorm)) for m in model.modules())


__all__ = ["CPUSyncBatchNorm", "convert_sync_batchnorm", "count_sync_batchnorm", "gather_batch", "world_size"]
