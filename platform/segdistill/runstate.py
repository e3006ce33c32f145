"""The state of one training run, built in one function: :func:`setup`.

A :class:`RunState` holds what a run trains with (datasets, student, teacher or its cached logits,
distiller, optimiser, the CE function) and how far it has come (iteration, best mIoU, curves,
evaluations, clocks). Everything that acts on it lives elsewhere: the step in :mod:`segdistill.train`,
evaluation in :mod:`segdistill.evaluation`, the schedule, logging, evaluation and checkpoint hooks in
:mod:`segdistill.hooks`; a cohort (:mod:`segdistill.cohort`) drives several states with one data stream.

Determinism and exact resume: all randomness of iteration ``i`` (which images, their augmentation,
dropout) is derived from ``(run.seed, i)`` (:func:`batches`), so a run resumed from the checkpoint
of iteration ``k`` (:meth:`RunState.restore`) replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .artifacts import atomic_save, load_pretrained_backbone, load_teacher, unwrap
from .config import TrainConfig, own_method_keys
from .data import build_datasets
from .data.registry import DatasetInfo
from .layout import CHECKPOINT_DIR, STATE_FILE
from .losses import build_distiller
from .models import build_model
from .models.segmentor import SegOutput
from .parallel import convert_sync_batchnorm
from .teacher_cache import TeacherLogitCache, open_teacher_cache
from .upsample_ce import segmentation_ce, upsampled_cross_entropy


# --------------------------------------------------------------------------------------------
# Seeds and the data stream
# --------------------------------------------------------------------------------------------
def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Seeded(Dataset):
    """Wraps a dataset so item ``(index, seed)`` is produced with all RNGs seeded by ``seed``.

    With ``variants`` > 0 (a teacher cache is in use) items also carry their cache row,
    ``index * variants + augmentation outcome``."""

    def __init__(self, inner: Dataset, variants: int = 0) -> None:
        self.inner = inner
        self.variants = variants

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        seed_everything(seed)
        if self.variants:
            image, label, variant = self.inner.item_with_variant(index)  # type: ignore[attr-defined]
            return image, label, index * self.variants + variant
        return self.inner[index]


class _IterationBatches(Sampler):
    """Yields, for iterations start..end-1, this rank's list of (index, seed) for the global batch.

    Sample position p = (it * world + rank) * batch + j walks through per-epoch permutations seeded by
    (seed, epoch); so the data order depends only on (seed, iteration) and resumes exactly.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, end: int, rank: int, world: int) -> None:
        self.n, self.batch, self.seed, self.start, self.end, self.rank, self.world = n, batch, seed, start, end, rank, world
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 1, epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.end):
            out = []
            for j in range(self.batch):
                p = (it * self.world + self.rank) * self.batch + j
                idx = int(self._perm(p // self.n)[p % self.n])
                out.append((idx, mix_seed(self.seed, 2, it, self.rank, j)))
            yield out

    def __len__(self) -> int:
        return max(0, self.end - self.start)


# --------------------------------------------------------------------------------------------
# Where a run trains
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the caller's ``torch.distributed`` group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def configure_gpu_backends(*, deterministic: bool) -> None:
    """Process-wide CUDA settings for a run: TF32 matmuls, and either cuDNN autotuning (fast; runs
    differ in the last bits, which training amplifies) or deterministic kernels (``run.deterministic``:
    runs repeat bit for bit, about 3x slower on an H100; ops with no deterministic kernel warn)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:  # cuBLAS reads this when its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@dataclass(frozen=True)
class Placement:
    """Device, process group and memory layout of a run (from ``cfg.run`` and ``torch.distributed``)."""

    device: torch.device
    rank: int
    world: int
    use_amp: bool
    memory_format: torch.memory_format

    @classmethod
    def of(cls, cfg: TrainConfig) -> Placement:
        rank, world = dist_info()
        device = resolve_device(cfg.run.device)
        if world > 1 and device.type == "cuda" and cfg.run.device in ("auto", "cuda"):
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        if device.type == "cuda":
            if device.index is not None:
                torch.cuda.set_device(device)
            configure_gpu_backends(deterministic=cfg.run.deterministic)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.optim.batch_size % world or cfg.optim.batch_size // world < 2:
            raise ValueError(f"optim.batch_size={cfg.optim.batch_size} is the global batch: it must split evenly over "
                             f"{world} workers with at least 2 images each (BatchNorm in the pooling branches)")
        channels_last = cfg.run.channels_last and device.type == "cuda"
        return cls(device, rank, world, cfg.run.amp and device.type == "cuda",
                   torch.channels_last if channels_last else torch.contiguous_format)


class ValTeacherLogits:
    """The frozen teacher's logits of validation batches, kept after the first evaluation computes them
    (up to ``budget`` bytes; batches past it are computed each time). A teacher in eval mode is a fixed
    function of its input, so every later evaluation - the run's next one, and each member's of a
    cohort, which share :class:`Inputs` - reads the same tensors it would compute."""

    def __init__(self, budget: int = 256 << 20) -> None:
        self.budget = budget
        self.nbytes = 0
        self._logits: dict[tuple[int, ...], Tensor] = {}

    def get(self, indices: tuple[int, ...], compute: Callable[[], Tensor]) -> Tensor:
        """The teacher's logits of the validation images ``indices`` (one batch), computed once."""
        hit = self._logits.get(indices)
        if hit is not None:
            return hit
        logits = compute()
        size = logits.numel() * logits.element_size()
        if self.nbytes + size <= self.budget:
            self._logits[indices] = logits
            self.nbytes += size
        return logits


@dataclass
class Inputs:
    """What runs on one data stream can share: the datasets and the teacher (live, cached or both),
    and the teacher's validation logits once an evaluation has computed them."""

    train_ds: Any
    val_ds: Any
    info: DatasetInfo
    teacher: nn.Module | None = None
    teacher_cache: TeacherLogitCache | None = None
    val_teacher_logits: ValTeacherLogits = field(default_factory=ValTeacherLogits)


def load_data(cfg: TrainConfig) -> Inputs:
    """The datasets of ``cfg.data``, built with every RNG seeded by ``(run.seed, 0)``."""
    seed_everything(mix_seed(cfg.run.seed, 0))
    return Inputs(*build_datasets(cfg.data))


def attach_teacher(inputs: Inputs, cfg: TrainConfig, place: Placement, *, cache: bool, keep_live: bool) -> None:
    """Load the frozen teacher ``distill.teacher_checkpoint`` into ``inputs`` and, with ``cache`` and
    ``run.teacher_cache`` set, open its logits cache; the live teacher is dropped when the cache serves
    every input, unless ``keep_live`` (a cohort whose other members tap its features)."""
    teacher = load_teacher(cfg.distill.teacher_checkpoint, arch=cfg.distill.teacher_arch,
                           num_classes=inputs.info.num_classes, device=place.device, data=cfg.data)
    inputs.teacher = teacher.to(memory_format=place.memory_format)
    if cache and cfg.run.teacher_cache:
        inputs.teacher_cache = open_teacher_cache(
            cfg.run.teacher_cache, data=cfg.data, teacher_file=cfg.distill.teacher_checkpoint,
            teacher=inputs.teacher, train_ds=inputs.train_ds, device=place.device, amp=place.use_amp,
            memory_format=place.memory_format, progress=cfg.run.progress and place.rank == 0)
        if inputs.teacher_cache is not None and not keep_live:
            inputs.teacher = None  # every input it will see is cached: free it


# --------------------------------------------------------------------------------------------
# The run state
# --------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """One run: what it trains with (set by :func:`setup`) and how far it has come (saved in its
    checkpoint). ``model`` is the module the step calls (the student, wrapped by DDP /
    ``torch.compile`` when configured); ``student`` is the bare network."""

    cfg: TrainConfig
    place: Placement
    inputs: Inputs
    student: nn.Module
    model: nn.Module
    distiller: nn.Module | None
    optimizer: torch.optim.Optimizer
    ce: Callable[..., Tensor]
    iteration: int = 0
    best_miou: float = float("-inf")
    curves: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    last_eval: dict[str, Any] = field(default_factory=dict)
    images_seen: int = 0
    train_time: float = 0.0  # seconds in training iterations (data + step), summed over resumes
    wall_time: float = 0.0  # seconds of the whole run incl. evaluation, summed over resumes
    eval_time: float = 0.0  # seconds in evaluation in this process
    segment_t0: float = 0.0  # perf_counter() at the start of the current (possibly resumed) segment

    # -- what the run was built with -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.place.device

    @property
    def num_classes(self) -> int:
        return self.inputs.info.num_classes

    @property
    def ignore_index(self) -> int:
        return self.inputs.info.ignore_index

    @property
    def val_ds(self):
        return self.inputs.val_ds

    @property
    def teacher(self) -> nn.Module | None:
        return self.inputs.teacher if self.distiller is not None else None

    @property
    def teacher_cache(self) -> TeacherLogitCache | None:
        return self.inputs.teacher_cache if self.distiller is not None else None

    @property
    def uses_teacher_cache(self) -> bool:
        """True when the distillation loss reads cached teacher logits instead of a live teacher."""
        return self.teacher_cache is not None and not self.distiller.required_features  # a cache implies a distiller

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.run.out_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def autocast(self):
        """The bf16 autocast of training and evaluation (GPU with ``run.amp``; a no-op otherwise)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.place.use_amp)

    # -- the teacher's output for a batch ------------------------------------------------------
    def cached_teacher_output(self, keys: Tensor | None) -> SegOutput | None:
        """The teacher's output for a batch from the cache (rows ``keys``), or None (live teacher)."""
        if keys is None or not self.uses_teacher_cache:
            return None
        assert self.teacher_cache is not None
        return SegOutput(self.teacher_cache.lookup(keys, self.device), None, {})

    @torch.no_grad()
    def live_teacher_output(self, images: Tensor) -> SegOutput:
        """The live teacher's forward under the training autocast (what the step would compute)."""
        if self.inputs.teacher is None:
            raise RuntimeError("this run has no live teacher")
        with self.autocast():
            return self.inputs.teacher(images)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.cfg.to_flat(),
            "num_classes": self.num_classes,
            "iteration": self.iteration,
            "model": unwrap(self.student).state_dict(),
            "distiller": self.distiller.state_dict() if self.distiller is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "best_miou": self.best_miou,
            "curves": self.curves,
            "evals": self.evals,
            "last_eval": self.last_eval,
            "images_seen": self.images_seen,
            "train_time": self.train_time,
            "wall_time": self.wall_time + (time.perf_counter() - self.segment_t0 if self.segment_t0 else 0.0),
            "rng": rng,
        }

    def save(self) -> str:
        """Write ``checkpoint/state.pt`` atomically; returns the checkpoint directory."""
        atomic_save(self.state_dict(), self.ckpt_dir / STATE_FILE)
        return str(self.ckpt_dir)

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` for the same data/model/distill/optim config."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_flat(own_method_keys(state["config"]))
        for section in ("data", "model", "distill", "optim"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise ValueError(f"checkpoint {path} was written by a run with a different '{section}' config; "
                                 f"use a fresh run.out_dir or resume=False")
        unwrap(self.student).load_state_dict(state["model"])
        if self.distiller is not None:
            self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name in ("iteration", "best_miou", "curves", "evals", "last_eval", "images_seen", "train_time", "wall_time"):
            setattr(self, name, state[name])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def setup(cfg: TrainConfig, *, inputs: Inputs | None = None) -> RunState:
    """Build a run: placement, the datasets, the student (seeded by ``(run.seed, 4)``; ImageNet
    backbone from ``model.pretrained``), the method's distiller, the teacher (and its logits cache
    when the method taps no features), the SGD optimiser over the student and the distiller's
    adapters, DDP / ``torch.compile`` wrapping and the CE implementation.

    ``inputs``: datasets shared with other runs on the same data stream (a cohort); the caller then
    attaches the teacher to them (:func:`attach_teacher`) before training."""
    place = Placement.of(cfg)
    shared = inputs is not None
    inputs = inputs if inputs is not None else load_data(cfg)
    seed_everything(mix_seed(cfg.run.seed, 4))  # the student's initialisation
    student = build_model(cfg.model.arch, inputs.info.num_classes, output_stride=cfg.model.output_stride,
                          aux=cfg.model.aux)
    if cfg.model.pretrained:
        load_pretrained_backbone(student, cfg.data, cfg.model.pretrained)
    student.to(place.device, memory_format=place.memory_format)
    if place.world > 1 and cfg.optim.sync_bn:  # BatchNorm statistics over every worker's images
        student = convert_sync_batchnorm(student, place.device)
    distiller = build_distiller(cfg.distill, ignore_index=inputs.info.ignore_index, student=student)
    if distiller is not None:
        if not shared:
            attach_teacher(inputs, cfg, place, cache=not distiller.required_features, keep_live=False)
        distiller.to(place.device)
        # feature taps were checked against the models' declared features when the distiller was built
        # (a dummy forward here would hit BatchNorm with a batch of 1 in training mode)
        distiller.check_features(frozenset(unwrap(student).feature_channels))
    # the method's adapters train with the student; an adversarial critic has its own optimiser
    params = list(student.parameters()) + (distiller.student_parameters() if distiller is not None else [])
    o = cfg.optim
    optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    model: nn.Module = student
    if place.world > 1:
        ids = [place.device.index] if place.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=ids)
    if cfg.run.compile:
        model = torch.compile(model)
    # The full-resolution upsample + CE is ~40% of a GPU step; compiled, it fuses (H200: +46% img/s).
    if cfg.run.ce_impl == "blocked":
        ce: Callable[..., Tensor] = upsampled_cross_entropy
    elif cfg.run.compile_loss and place.device.type == "cuda":
        ce = torch.compile(segmentation_ce)
    else:
        ce = segmentation_ce
    return RunState(cfg, place, inputs, student, model, distiller, optimizer, ce)


def loader(run: RunState, start: int, end: int) -> DataLoader:
    """The DataLoader of iterations ``start..end-1``: this rank's share of each global batch."""
    cfg, place = run.cfg, run.place
    sampler = _IterationBatches(len(run.inputs.train_ds), cfg.optim.batch_size // place.world, cfg.run.seed,
                                start, end, place.rank, place.world)
    variants = run.teacher_cache.variants if run.teacher_cache is not None else 0
    return DataLoader(_Seeded(run.inputs.train_ds, variants), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                      pin_memory=place.device.type == "cuda", persistent_workers=False)


def batches(run: RunState, start: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """``(images, labels, cache keys or None)`` on the device for iterations ``start``.. (default:
    from the run's iteration) to the end; the same stream for every run with this data config,
    batch size and seed."""
    first = run.iteration if start is None else start
    for batch in loader(run, first, run.cfg.optim.iterations):
        images = batch[0].to(run.device, non_blocking=True, memory_format=run.place.memory_format)
        labels = batch[1].to(run.device, non_blocking=True)
        yield images, labels, (batch[2] if len(batch) == 3 else None)
