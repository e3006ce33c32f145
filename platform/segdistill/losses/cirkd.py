"""Cross-image relational KD (CIRKD; Yang et al., CVPR 2022).

What it transfers, besides pixel KD: *relations between pixels across images*.
- Mini-batch pixel-to-pixel relations (:func:`minibatch_pair_loss`): for every ordered pair of
  images (i, j) in the batch, each pooled pixel of image i gets a softmax distribution (temperature
  0.1) over its similarities to all pooled pixels of image j; the student's distributions are
  matched to the teacher's with KL ('batchmean' over the rows), averaged over the B^2 pairs.
  Features are L2-normalised and, as in the reference used by the HWD code (losses/loss.py:168-175,
  pooling disabled), not pooled (``pool=1``, ``distill.cirkd_pair_pool``); ``pool > 1`` max-pools
  first (ceil mode), which CIRKD's own code does only for maps of 256 x 256 and more.
- Memory-bank pixel and region contrast (:func:`contrast_kd_loss` over :class:`MemoryBank`):
  per-class queues of teacher pixel embeddings and of teacher region (per image, per class mean)
  embeddings. Each anchor pixel's similarities (temperature 0.1) to a random subset of every
  class's queue form logits; the student's (after a projection head to the teacher's width) are
  matched to the teacher's with KL at temperature 1.
Reference weights: KD 1, mini-batch 1, memory pixel 0.1, memory region 0.1.

Deviations from the reference code (``losses/memory_loss.py``), on purpose:
- Bug fix: when the reference enqueues pixel embeddings of class c it draws ``randperm(N_c)`` and
  indexes the image's *flattened map* with it, i.e. it takes the raw positions 0..N_c-1 (mostly
  the top rows of the image, of any class) instead of pixels of class c. Here the K pixels of
  class c are drawn from the class mask.
- Memory is sized by config (``distill.cirkd_pixel_memory`` / ``cirkd_region_memory`` entries per
  class) and its footprint is computed and checked against ``distill.cirkd_max_memory_mb``; the
  reference's 20000 + 2000 entries per class (150 classes x 256-d: ~3.4 GB) would be a bad
  default on a CPU. The queue width is the teacher feature's width read from the model (the
  reference hard-codes 128 -> 256, so it only runs R101 -> R18/MBV2).
- Anchors: the reference uses every valid pixel (``distill.cirkd_anchors`` = 0, the default);
  ``cirkd_anchors`` > 0 caps them by a random subset (an option for memory-bound runs).
- The reference also enqueues before it computes the contrast (so the current batch is among the
  negatives); kept. Class 0 is enqueued like every other class; ignore pixels and ids >= C never.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, check
from ._checks import check_features_4d, check_labels, check_positive
from .cwd import PixelKD, kd_loss
from .distiller import Distiller, DistillSettings
from .hwd import downsample_labels
from .params import BatchCoupling, FeatureTap, require_nonnegative, require_positive
from .skd import match_size, pooled_unit_features

log = logging.getLogger(__name__)

PIXEL_UPDATE_FREQ = 16  # pixels per (image, class) enqueued each step (reference: 16)


@dataclass(frozen=True)
class CIRKDParams(FeatureTap, PixelKD, BatchCoupling):
    """CIRKD's parameters (defaults: the reference recipe, docs/METHODS.md): the feature tap, the
    pixel-KD term, the batch coupling of the mini-batch pairs; the mini-batch pair term's weight,
    temperature and max-pool window (``cirkd_pair_weight`` 1, ``cirkd_pair_tau`` 0.1,
    ``cirkd_pair_pool`` 1 = unpooled, in [1, 64]); the memory contrast's weights and temperatures
    (``cirkd_pixel_weight`` / ``cirkd_region_weight`` 0.1, ``cirkd_contrast_tau`` 0.1,
    ``cirkd_contrast_kd_tau`` 1); the per-class queue sizes (``cirkd_pixel_memory`` 2000,
    ``cirkd_region_memory`` 200; reference 20000 / 2000), refused above ``cirkd_max_memory_mb``;
    negatives sampled per class per step (``cirkd_pixel_contrast`` / ``cirkd_region_contrast``,
    0 = the reference's ``4096 // C + 1`` / ``1024 // C + 1``) and anchor pixels per step
    (``cirkd_anchors``, 0 = every valid pixel)."""

    cirkd_pair_pool: int = 1
    cirkd_pair_weight: float = 1.0
    cirkd_pixel_weight: float = 0.1
    cirkd_region_weight: float = 0.1
    cirkd_pair_tau: float = 0.1
    cirkd_contrast_tau: float = 0.1
    cirkd_contrast_kd_tau: float = 1.0
    cirkd_pixel_memory: int = 2000
    cirkd_region_memory: int = 200
    cirkd_pixel_contrast: int = 0
    cirkd_region_contrast: int = 0
    cirkd_anchors: int = 0
    cirkd_max_memory_mb: float = 1024.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("cirkd_pair_weight", "cirkd_pixel_weight", "cirkd_region_weight"):
            require_nonnegative(name, getattr(self, name))
        for name in ("cirkd_pair_tau", "cirkd_contrast_tau", "cirkd_contrast_kd_tau", "cirkd_max_memory_mb"):
            require_positive(name, getattr(self, name))
        check(1 <= self.cirkd_pair_pool <= 64, f"distill.cirkd_pair_pool must be in [1, 64], got {self.cirkd_pair_pool}")
        for name in ("cirkd_pixel_memory", "cirkd_region_memory"):
            check(getattr(self, name) >= 1, f"distill.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cirkd_pixel_contrast", "cirkd_region_contrast"):
            check(getattr(self, name) >= 0,
                  f"distill.{name} must be >= 0 (0 = the reference's size), got {getattr(self, name)}")
        check(self.cirkd_anchors >= 0, f"distill.cirkd_anchors must be >= 0 (0 = all valid pixels), got {self.cirkd_anchors}")


def minibatch_pair_loss(student_feat: Tensor, teacher_feat: Tensor, *, tau: float = 0.1, pool: int = 1) -> Tensor:
    """CIRKD's mini-batch cross-image pixel-pair distillation (paper Eq. 2-3).

    ``1/B^2 sum_{i,j} 1/N sum_n KL(softmax_m(a^T_ij[n, m] / tau) || softmax_m(a^S_ij[n, m] / tau))``
    with ``a_ij = f_i^T f_j`` the (N, N) cosine similarities of pooled pixels of images i and j.

    Args:
        student_feat: (B, Ds, h, w); teacher_feat: (B, Dt, ht, wt), constant. Widths may differ.
    Returns:
        scalar float32.
    """
    check_features_4d("minibatch_pair_loss", student_feat, teacher_feat)
    check_positive("tau", tau)
    s = pooled_unit_features(match_size(student_feat, teacher_feat), pool)  # (B, Ds, N)
    t = pooled_unit_features(teacher_feat.detach(), pool)  # (B, Dt, N)
    b, n = s.shape[0], s.shape[2]
    sim_s = torch.einsum("idn,jdm->ijnm", s, s)  # (B, B, N, N)
    sim_t = torch.einsum("idn,jdm->ijnm", t, t)
    log_ps = F.log_softmax(sim_s / tau, dim=-1)
    log_pt = F.log_softmax(sim_t / tau, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (B, B, N)
    return kl.sum() / (b * b * n)


def contrast_kd_loss(student_emb: Tensor, teacher_emb: Tensor, negatives: Tensor, *, tau: float = 0.1,
                     kd_tau: float = 1.0) -> Tensor:
    """KL between the teacher's and student's similarity distributions over memory entries.

    ``logits = emb @ negatives^T / tau``; loss = ``KL(softmax(t / kd_tau) || softmax(s / kd_tau))``
    summed over entries, averaged over anchors ('batchmean'), times kd_tau^2.

    Args:
        student_emb, teacher_emb: (A, D) L2-normalised anchor embeddings (student projected).
        negatives: (K, D) memory entries.
    Returns:
        scalar float32 (0 if there are no anchors).
    """
    check_positive("tau", tau)
    check_positive("kd_tau", kd_tau)
    if student_emb.dim() != 2 or student_emb.shape != teacher_emb.shape or negatives.dim() != 2 \
            or negatives.shape[1] != student_emb.shape[1]:
        raise ValueError(f"contrast_kd_loss: need (A, D) anchors and (K, D) negatives, got {tuple(student_emb.shape)}, "
                         f"{tuple(teacher_emb.shape)}, {tuple(negatives.shape)}")
    if student_emb.shape[0] == 0:
        return student_emb.sum() * 0.0
    neg = negatives.float()
    s_logits = student_emb.float() @ neg.t() / tau  # (A, K)
    t_logits = teacher_emb.detach().float() @ neg.t() / tau
    log_ps = F.log_softmax(s_logits / kd_tau, dim=1)
    log_pt = F.log_softmax(t_logits / kd_tau, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum() / s_logits.shape[0] * kd_tau * kd_tau


def memory_bytes(num_classes: int, pixel_memory: int, region_memory: int, dim: int) -> int:
    """Bytes held by the float32 queues: ``C * (pixel + region) * D * 4`` (+ the pointers)."""
    return num_classes * (pixel_memory + region_memory) * dim * 4 + 2 * num_classes * 8


class ProjectionHead(nn.Module):
    """Student embedding -> teacher width: 1x1 conv, BN, ReLU, 1x1 conv (reference ``project_head``)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
            nn.BatchNorm2d(teacher_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, Ds, h, w) -> (B, Dt, h, w)


class MemoryBank(nn.Module):
    """Per-class FIFO queues of teacher embeddings (buffers: saved in checkpoints, resumed exactly).

    ``pixel_queue`` (C, P, D), ``region_queue`` (C, R, D), both initialised with random unit vectors
    as in the reference; ``pixel_ptr``/``region_ptr`` (C,) write positions.
    """

    def __init__(self, num_classes: int, dim: int, pixel_memory: int, region_memory: int,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if min(num_classes, dim, pixel_memory, region_memory) < 1:
            raise ValueError(f"MemoryBank sizes must be >= 1: classes {num_classes}, dim {dim}, "
                             f"pixel {pixel_memory}, region {region_memory}")
        self.num_classes, self.dim, self.ignore_index = num_classes, dim, ignore_index
        self.register_buffer("pixel_queue", F.normalize(torch.randn(num_classes, pixel_memory, dim), dim=2))
        self.register_buffer("region_queue", F.normalize(torch.randn(num_classes, region_memory, dim), dim=2))
        self.register_buffer("pixel_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("region_ptr", torch.zeros(num_classes, dtype=torch.long))

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    @torch.no_grad()
    def enqueue(self, teacher_emb: Tensor, labels_small: Tensor) -> None:
        """Push, per image and present class, the normalised class-mean embedding (region queue)
        and up to 16 normalised pixel embeddings drawn *from the class mask* (pixel queue).

        Args:
            teacher_emb: (B, D, h, w) L2-normalised over D. labels_small: (B, h, w) at that size.
        """
        b, d = teacher_emb.shape[:2]
        feats = teacher_emb.detach().float().reshape(b, d, -1)  # (B, D, hw)
        labs = labels_small.reshape(b, -1)
        pixel_size, region_size = self.pixel_queue.shape[1], self.region_queue.shape[1]
        for i in range(b):
            present = torch.unique(labs[i])
            for c in present.tolist():
                if c < 0 or c >= self.num_classes or c == self.ignore_index:
                    continue
                where = (labs[i] == c).nonzero(as_tuple=True)[0]  # positions of class c
                f = feats[i][:, where]  # (D, N_c)
                ptr = int(self.region_ptr[c])
                self.region_queue[c, ptr] = F.normalize(f.mean(dim=1), dim=0)
                self.region_ptr[c] = (ptr + 1) % region_size
                k = min(where.numel(), PIXEL_UPDATE_FREQ, pixel_size)
                pick = torch.randperm(where.numel(), device=where.device)[:k]  # from the class mask (fix)
                emb = F.normalize(f[:, pick].t(), dim=1)  # (k, D)
                ptr = int(self.pixel_ptr[c])
                if ptr + k >= pixel_size:  # the reference's wrap: fill the tail, restart at 0
                    self.pixel_queue[c, pixel_size - k:] = emb
                    self.pixel_ptr[c] = 0
                else:
                    self.pixel_queue[c, ptr:ptr + k] = emb
                    self.pixel_ptr[c] = ptr + k

    def sample(self, queue: Tensor, per_class: int) -> Tensor:
        """``per_class`` random slots (the same slots for every class, as the reference) of each
        class's queue: (C * min(per_class, queue length), D) - like the reference's
        ``randperm(size)[:per_class]``, asking for more than the queue holds takes all of it."""
        idx = torch.randperm(queue.shape[1], device=queue.device)[:per_class]
        return queue[:, idx].reshape(-1, queue.shape[2])


def valid_anchor_index(labels_small: Tensor, num_classes: int, ignore_index: int, cap: int) -> Tensor:
    """Flat indices into B*h*w of pixels with a valid class; a random subset of ``cap`` if cap > 0."""
    flat = labels_small.reshape(-1)
    idx = ((flat >= 0) & (flat < num_classes) & (flat != ignore_index)).nonzero(as_tuple=True)[0]
    if cap > 0 and idx.numel() > cap:
        idx = idx[torch.randperm(idx.numel(), device=idx.device)[:cap]]
    return idx


def memory_contrast_terms(student_proj: Tensor, teacher_feat: Tensor, labels: Tensor, bank: MemoryBank, *,
                          pixel_contrast: int, region_contrast: int, tau: float = 0.1, kd_tau: float = 1.0,
                          anchors: int = 0) -> tuple[Tensor, Tensor]:
    """CIRKD's memory pixel and region contrast terms (paper Eq. 5-8), enqueueing the batch first.

    Args:
        student_proj: (B, Dt, h, w) projected student embedding; teacher_feat: (B, Dt, h, w).
        labels: (B, H, W) ground truth.
    Returns:
        (pixel term, region term), scalars.
    """
    check_features_4d("memory_contrast_terms", student_proj, teacher_feat)
    check_labels(labels, student_proj)
    s = F.normalize(match_size(student_proj, teacher_feat).float(), dim=1)
    t = F.normalize(teacher_feat.detach().float(), dim=1)
    if s.shape[1] != bank.dim or t.shape[1] != bank.dim:
        raise ValueError(f"embeddings are {s.shape[1]}/{t.shape[1]}-d but the memory bank holds {bank.dim}-d entries")
    small = downsample_labels(labels, tuple(t.shape[-2:]))  # (B, h, w)
    bank.enqueue(t, small)
    idx = valid_anchor_index(small, bank.num_classes, bank.ignore_index, anchors)
    d = t.shape[1]
    s_a = s.permute(0, 2, 3, 1).reshape(-1, d)[idx]  # (A, D)
    t_a = t.permute(0, 2, 3, 1).reshape(-1, d)[idx]
    pix = contrast_kd_loss(s_a, t_a, bank.sample(bank.pixel_queue, pixel_contrast), tau=tau, kd_tau=kd_tau)
    reg = contrast_kd_loss(s_a, t_a, bank.sample(bank.region_queue, region_contrast), tau=tau, kd_tau=kd_tau)
    return pix, reg


def format_bytes(n: int) -> str:
    if n <= 0:
        return "0 B"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = min(int(math.log(n, 1024)), len(units) - 1)
    return f"{n / 1024 ** k:.1f} {units[k]}"


def reference_contrast_size(total: int, num_classes: int) -> int:
    """CIRKD's negatives per class: ``total // C + 1`` (train_cirkd.py:170-171 passes 4096 and 1024)."""
    return total // max(num_classes, 1) + 1


class CIRKDDistiller(Distiller):
    """Cross-image relational KD (Yang et al., CVPR 2022). Transfers pixel KD (``distill.kd_weight``,
    1), mini-batch cross-image pixel-pair relations (``distill.cirkd_pair_weight`` 1, temperature
    ``cirkd_pair_tau`` 0.1, unpooled: ``cirkd_pair_pool`` 1), and memory-bank pixel / region contrast
    (``cirkd_pixel_weight`` 0.1, ``cirkd_region_weight`` 0.1, temperatures ``cirkd_contrast_tau`` 0.1 /
    ``cirkd_contrast_kd_tau`` 1; ``cirkd_pixel_contrast`` / ``cirkd_region_contrast`` negatives per class,
    0 = the reference's ``4096 // C + 1`` / ``1024 // C + 1``) through a projection head (student width
    -> teacher width, read from the models) and per-class queues sized by ``cirkd_pixel_memory`` /
    ``cirkd_region_memory``, refused above ``cirkd_max_memory_mb``. Tap ``"head"``. Reference
    ``distill.alpha = 1``. Deviations (pixel sampling from the class mask, not raw positions; memory
    sizing): see :mod:`.cirkd`."""

    params_class = CIRKDParams
    feature_tap = "head"
    zero_at_equality = ("kd", "pair")

    def __init__(self, cfg: DistillSettings, **kw) -> None:
        super().__init__(cfg, **kw)
        p = self.params
        need = memory_bytes(self.num_classes, p.cirkd_pixel_memory, p.cirkd_region_memory, self.teacher_width)
        self.memory_footprint = need
        if need > p.cirkd_max_memory_mb * 2**20:
            raise ConfigError(
                f"distill.cirkd_pixel_memory={p.cirkd_pixel_memory} / distill.cirkd_region_memory="
                f"{p.cirkd_region_memory} per class need {format_bytes(need)} of queues ({self.num_classes} classes x "
                f"{self.teacher_width}-d), above distill.cirkd_max_memory_mb={p.cirkd_max_memory_mb:g}; "
                f"shrink the memories or raise the cap")
        # negatives sampled per class per step: the reference passes 4096 // C + 1 and 1024 // C + 1
        # (train_cirkd.py:170-171); a positive config value overrides
        self.pixel_contrast = p.cirkd_pixel_contrast or reference_contrast_size(4096, self.num_classes)
        self.region_contrast = p.cirkd_region_contrast or reference_contrast_size(1024, self.num_classes)
        self.projector = ProjectionHead(self.student_width, self.teacher_width)
        self.memory = MemoryBank(self.num_classes, self.teacher_width, p.cirkd_pixel_memory, p.cirkd_region_memory,
                                 ignore_index=self.ignore_index)
        log.info("cirkd memory bank: %d classes x (%d pixel + %d region) x %d-d = %s", self.num_classes,
                 p.cirkd_pixel_memory, p.cirkd_region_memory, self.teacher_width, format_bytes(need))

    def terms(self, s_logits, t_logits, labels, s_features=None, t_features=None):  # type: ignore[override]
        c = self.params
        fs, ft = self.tapped(s_features, t_features)
        pix, reg = memory_contrast_terms(
            self.projector(fs), ft, labels, self.memory, pixel_contrast=self.pixel_contrast,
            region_contrast=self.region_contrast, tau=c.cirkd_contrast_tau, kd_tau=c.cirkd_contrast_kd_tau,
            anchors=c.cirkd_anchors)
        return {"kd": c.kd_weight * kd_loss(s_logits, t_logits, temperature=c.kd_temperature),
                "pair": c.cirkd_pair_weight * minibatch_pair_loss(*self.coupled(fs, ft.detach()), tau=c.cirkd_pair_tau,
                                                                  pool=c.cirkd_pair_pool),
                "memory_pixel": c.cirkd_pixel_weight * pix,
                "memory_region": c.cirkd_region_weight * reg}

    def describe(self) -> dict[str, float]:
        return {**super().describe(), "memory_bytes": float(self.memory_footprint)}


__all__ = [
    "PIXEL_UPDATE_FREQ", "CIRKDDistiller", "CIRKDParams", "MemoryBank", "ProjectionHead", "contrast_kd_loss",
    "format_bytes", "memory_bytes", "memory_contrast_terms", "minibatch_pair_loss", "reference_contrast_size",
    "valid_anchor_index"
]
