"""The trainer: teacher training (CE) or student distillation (CE + aux CE + alpha * method loss).

``fit(cfg, callbacks)`` runs in the calling process with plain PyTorch (no Ray). If the caller has
initialised ``torch.distributed`` (Ray Train's TorchTrainer does), the student is wrapped in DDP,
every rank trains on its own shard of each global batch and evaluation is sharded and all-reduced.

Determinism and exact resume: all randomness of iteration ``i`` (which images, their augmentation,
dropout) is derived from ``(run.seed, i)``, so a run resumed from the checkpoint of iteration ``k``
replays exactly what an uninterrupted run would have done. Checkpoints hold the model, optimiser,
iteration, best metric, curves and RNG states, and are written atomically (temp file + rename).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoints import BACKBONE_PREPROCESSING, MODEL_FORMAT, check_preprocessing, describe_format, load_model
from .config import DataConfig, TrainConfig
from .data import build_datasets, preprocessing_of
from .losses import build_distiller
from .parallel import convert_sync_batchnorm
from .metrics import ConfusionMatrix, EvalAccumulators, TDNTDMeter, per_class_rows
from .models import build_model, count_flops, count_params
from .models.segmentor import SegOutput
from .models.weights import backbone_state
from .teacher_cache import TeacherLogitCache, open_teacher_cache
from .upsample_ce import upsampled_cross_entropy

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------
@dataclass
class EvalEvent:
    """Passed to ``Callback.on_eval`` after each evaluation (on every rank)."""

    iteration: int
    metrics: dict[str, float]
    checkpoint_dir: str | None  # set on rank 0 when a checkpoint was written at this evaluation
    rank: int = 0
    world_size: int = 1


@dataclass
class FitResult:
    config: TrainConfig
    iterations_done: int
    best_miou: float
    final_miou: float  # mmseg convention (metrics.ConfusionMatrix)
    pixel_acc: float
    per_class: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    params: int
    flops: float
    wall_time_s: float
    images_per_s: float
    device: str
    checkpoint_dir: str | None
    model_path: str | None
    stopped_early: bool = False
    evals: list[dict[str, float]] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] | None = None  # {"features": (N, D), "labels": (N,)} if run.embedding_pixels
    samples: list[dict[str, np.ndarray]] | None = None  # [{"image", "label", "prediction"}] if run.sample_images
    final_miou_all_classes: float = float("nan")  # the reference code's average over all classes
    effective_alpha: float = float("nan")  # the L_distill weight trained with (distill.alpha or the reference's)


class Callback(Protocol):
    """Any subset of these methods; ``on_eval`` may return True to stop training early."""

    def on_log(self, record: dict[str, float]) -> None: ...
    def on_eval(self, event: EvalEvent) -> bool | None: ...
    def on_end(self, result: FitResult) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the iteration and the term."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _seed_everything(seed: int) -> None:
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
        _seed_everything(seed)
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
            g = torch.Generator().manual_seed(_mix_seed(self.seed, 1, epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.end):
            out = []
            for j in range(self.batch):
                p = (it * self.world + self.rank) * self.batch + j
                idx = int(self._perm(p // self.n)[p % self.n])
                out.append((idx, _mix_seed(self.seed, 2, it, self.rank, j)))
            yield out

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a ``.<name>.<pid>.tmp`` sibling, fsync, rename: ``path`` is always either the
    previous complete file or the new one. A failed write (disk full) removes its temp file; temp
    files of writers that were killed (their pid is gone) are removed before writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch reports a short write as RuntimeError
            import shutil

            free = shutil.disk_usage(path.parent).free / 2**20
            raise OSError(f"writing {path} failed ({type(exc).__name__}: {exc}); {free:.0f} MiB free on its "
                          f"filesystem - disk full or file-size limit? The previous {path.name}, if any, is "
                          "intact") from exc
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


def save_model_artifact(model: nn.Module, cfg: TrainConfig, path: str | Path, metrics: dict[str, float] | None = None) -> Path:
    """Write weights + architecture facts: the file a teacher is loaded from (the model zoo unit)."""
    m = _unwrap(model)
    payload = {
        "format": MODEL_FORMAT,
        "arch": cfg.model.arch,
        "num_classes": m.num_classes,
        "output_stride": cfg.model.output_stride,
        "aux": cfg.model.aux,
        "dataset": cfg.data.name,
        "config": cfg.to_flat(),
        "metrics": dict(metrics or {}),
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
    }
    path = Path(path)
    _atomic_save(payload, path)
    return path


def load_teacher(path: str | Path, *, arch: str, num_classes: int, device: torch.device,
                 data: DataConfig | None = None) -> nn.Module:
    """Load a frozen teacher (eval mode, no gradients, no aux head) and check it matches the config.

    ``path`` is a ``model.pt`` artefact written by :func:`save_model_artifact`, a training ``state.pt``
    checkpoint (its ``model`` weights are used) or a reference-code checkpoint (``torch.save(model.
    state_dict())`` with ``pretrained.*`` / ``head.*`` / ``auxlayer.*`` keys; docs/REFERENCE.md), the
    format detected from the content (:mod:`segdistill.checkpoints`). ``arch`` and ``num_classes``
    must match the file (a ValueError names both). With ``data``, its preprocessing fields must be
    the ones the teacher was trained with (the reference's for a reference file): a ConfigError
    names the fields and the values to set. Nothing is loaded unless everything fits.
    """
    teacher, file = load_model(path, arch=arch, num_classes=num_classes, aux=False)
    if data is not None:
        check_preprocessing(file.preprocessing, data, field="distill.teacher_checkpoint", value=str(path),
                            why=describe_format(file))
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def load_pretrained_backbone(model: nn.Module, data: DataConfig, path: str) -> str:
    """``model.pretrained``: load an ImageNet backbone file (or a directory's reference file) into
    ``model`` after checking that ``data``'s preprocessing is the one the weights expect (the
    reference's for reference files, torchvision's ImageNet RGB mean/std for torchvision files).
    Returns the file's format. Nothing is loaded when anything does not fit."""
    state, fmt, file = backbone_state(model, path)
    check_preprocessing(BACKBONE_PREPROCESSING[fmt], data, field="model.pretrained", value=path,
                        why=f"a {fmt}-format ImageNet backbone file ({file.name})")
    model.backbone.load_state_dict(state, strict=False)  # checked: only num_batches_tracked may be absent
    return fmt


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """Poly decay: lr * (1 - it / total) ** power."""
    return base_lr * (1.0 - iteration / total) ** power


# --------------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------------
def upsample_logits(logits: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear upsampling of logits (B, C, h, w) to ``size`` (H, W): the evaluation path
    (``model.eval_align_corners``; the reference code uses True, docs/REFERENCE.md "Evaluation")."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def segmentation_ce(logits: Tensor, labels: Tensor, ignore_index: int = 255, *, align_corners: bool = False) -> Tensor:
    """Paper Eq. (1): CE of logits (B, C, h, w) bilinearly upsampled to the labels (B, H, W)
    (``align_corners``: ``model.ce_align_corners`` / ``model.aux_align_corners``)."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)  # (B, C, H, W)
    return F.cross_entropy(up.float(), labels, ignore_index=ignore_index)


def distillation_losses(student: nn.Module, teacher: nn.Module | None, distiller: nn.Module | None,
                        images: Tensor, labels: Tensor, *, alpha: float, aux_weight: float,
                        ignore_index: int = 255, ce: Callable[..., Tensor] = segmentation_ce,
                        teacher_output: SegOutput | None = None, ce_align_corners: bool = False,
                        aux_align_corners: bool = False) -> dict[str, Tensor]:
    """Forward passes and the named loss terms of one step (paper Eq. 8 plus the aux head):

        loss/total = loss/ce + aux_weight * loss/aux + alpha * loss/distill

    The teacher runs without gradient; the distiller sees both networks' main logits (1/8
    resolution) and named feature dicts; a method with several terms also reports each weighted
    term as ``loss/distill_<name>`` (their sum is ``loss/distill``). ``ce`` is :func:`segmentation_ce`, its ``torch.compile`` d form or
    :func:`~segdistill.upsample_ce.upsampled_cross_entropy` (same maths). ``teacher_output``, when
    given, replaces the teacher's forward (a cohort's shared forward, or cached logits).
    ``ce_align_corners`` / ``aux_align_corners``: the upsampling of the CE and of the aux CE.
    """
    t_logits, t_features = None, None
    if teacher_output is not None:
        t_logits, t_features = teacher_output.logits, teacher_output.features
    elif teacher is not None:
        with torch.no_grad():
            t_out = teacher(images)
        t_logits, t_features = t_out.logits, t_out.features  # (B, C, h, w), named feature taps
    out = student(images)
    terms: dict[str, Tensor] = {"loss/ce": ce(out.logits, labels, ignore_index, align_corners=ce_align_corners)}
    total = terms["loss/ce"]
    if out.aux is not None and aux_weight > 0:
        terms["loss/aux"] = ce(out.aux, labels, ignore_index, align_corners=aux_align_corners)
        total = total + aux_weight * terms["loss/aux"]
    if distiller is not None:
        if t_logits is None:
            raise ValueError("a distillation method needs a teacher or a precomputed teacher_output")
        parts = distiller.terms(out.logits, t_logits, labels, out.features, t_features)  # weighted, named
        terms["loss/distill"] = torch.stack([v.float() for v in parts.values()]).sum()
        if len(parts) > 1:
            terms.update({f"loss/distill_{k}": v for k, v in parts.items()})
        total = total + alpha * terms["loss/distill"]
    terms["loss/total"] = total
    return terms


def check_finite(terms: dict[str, Tensor], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the iteration and each NaN/inf loss term."""
    finite = torch.stack([v.detach().float() for v in terms.values()]).isfinite()
    if not bool(finite.all()):
        bad = {k: float(terms[k].detach()) for k, ok in zip(terms, finite.tolist()) if not ok}
        raise NonFiniteLossError(f"non-finite loss at iteration {iteration}: {bad}")


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
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


class Trainer:
    """Holds the state of one run; :func:`fit` is the entry point."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[object] = (), *, shared: "Trainer | None" = None,
                 keep_teacher: bool = False) -> None:
        """``shared``: another trainer of the same cohort (see :mod:`segdistill.cohort`) whose datasets,
        teacher and teacher cache this one reuses instead of building its own. ``keep_teacher``: keep
        the live teacher even when a teacher cache serves this run (a cohort's other members may need it)."""
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.rank, self.world = _dist_info()
        self.device = resolve_device(cfg.run.device)
        if self.world > 1 and self.device.type == "cuda" and cfg.run.device in ("auto", "cuda"):
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        if self.device.type == "cuda":
            if self.device.index is not None:
                torch.cuda.set_device(self.device)
            configure_gpu_backends(deterministic=cfg.run.deterministic)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.optim.batch_size % self.world or cfg.optim.batch_size // self.world < 2:
            raise ValueError(f"optim.batch_size={cfg.optim.batch_size} is the global batch: it must split evenly over "
                             f"{self.world} workers with at least 2 images each (BatchNorm in the pooling branches)")
        self.rank_batch = cfg.optim.batch_size // self.world
        self.out_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out_dir / CHECKPOINT_DIR
        self.use_amp = cfg.run.amp and self.device.type == "cuda"
        self.memory_format = torch.channels_last if (cfg.run.channels_last and self.device.type == "cuda") else torch.contiguous_format

        _seed_everything(_mix_seed(cfg.run.seed, 0))
        if shared is None:
            self.train_ds, self.val_ds, self.info = build_datasets(cfg.data)
        else:
            self.train_ds, self.val_ds, self.info = shared.train_ds, shared.val_ds, shared.info
        self.num_classes = self.info.num_classes
        self.ignore_index = self.info.ignore_index

        _seed_everything(_mix_seed(cfg.run.seed, 4))  # the student's initialisation
        self.student = build_model(cfg.model.arch, self.num_classes, output_stride=cfg.model.output_stride,
                                   aux=cfg.model.aux)
        if cfg.model.pretrained:
            load_pretrained_backbone(self.student, cfg.data, cfg.model.pretrained)
        self.student.to(self.device, memory_format=self.memory_format)
        if self.world > 1 and cfg.optim.sync_bn:  # BatchNorm statistics over every worker's images
            self.student = convert_sync_batchnorm(self.student, self.device)
        self.teacher: nn.Module | None = None
        self.teacher_cache: TeacherLogitCache | None = None
        self.distiller = build_distiller(cfg.distill, ignore_index=self.ignore_index, student=self.student)
        if self.distiller is not None:
            if shared is not None and shared.teacher is not None:
                self.teacher, self.teacher_cache = shared.teacher, shared.teacher_cache
            else:
                self.teacher = load_teacher(cfg.distill.teacher_checkpoint, arch=cfg.distill.teacher_arch,
                                            num_classes=self.num_classes, device=self.device, data=cfg.data)
                self.teacher.to(memory_format=self.memory_format)
                if cfg.run.teacher_cache and not self.distiller.required_features:
                    self.teacher_cache = open_teacher_cache(
                        cfg.run.teacher_cache, data=cfg.data, teacher_file=cfg.distill.teacher_checkpoint,
                        teacher=self.teacher, train_ds=self.train_ds, device=self.device, amp=self.use_amp,
                        memory_format=self.memory_format, progress=cfg.run.progress and self.rank == 0)
                    if self.teacher_cache is not None and shared is None and not keep_teacher:
                        self.teacher = None  # every input it will see is cached: free it
            self.distiller.to(self.device)
            # feature taps were checked against the models' declared features when the distiller was built
            # (a dummy forward here would hit BatchNorm with a batch of 1 in training mode)
            self.distiller.check_features(frozenset(_unwrap(self.student).feature_channels))
        # the method's adapters train with the student; an adversarial critic has its own optimiser
        params = list(self.student.parameters()) + (self.distiller.student_parameters() if self.distiller is not None else [])
        o = cfg.optim
        self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.model: nn.Module = self.student
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        if cfg.run.compile:
            self.model = torch.compile(self.model)
        # The full-resolution upsample + CE is ~40% of a GPU step; compiled, it fuses (H200: +46% img/s).
        if cfg.run.ce_impl == "blocked":
            self.ce: Callable[..., Tensor] = upsampled_cross_entropy
        elif cfg.run.compile_loss and self.device.type == "cuda":
            self.ce = torch.compile(segmentation_ce)
        else:
            self.ce = segmentation_ce

        self.iteration = 0
        self.best_miou = float("-inf")
        self.curves: list[dict[str, Any]] = []
        self.evals: list[dict[str, float]] = []
        self.last_eval: dict[str, Any] = {}
        self.images_seen = 0
        self.train_time = 0.0  # seconds in training iterations (data + step), summed over resumes
        self.wall_time = 0.0  # seconds of the whole run incl. evaluation, summed over resumes
        self.eval_time = 0.0  # seconds in evaluation in this process
        self._run_t0 = 0.0  # start of the current (possibly resumed) segment

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.cfg.to_flat(),
            "num_classes": self.num_classes,
            "iteration": self.iteration,
            "model": _unwrap(self.student).state_dict(),
            "distiller": self.distiller.state_dict() if self.distiller is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "best_miou": self.best_miou,
            "curves": self.curves,
            "evals": self.evals,
            "last_eval": self.last_eval,
            "images_seen": self.images_seen,
            "train_time": self.train_time,
            "wall_time": self.wall_time + (time.perf_counter() - self._run_t0 if self._run_t0 else 0.0),
            "rng": rng,
        }

    def save_checkpoint(self) -> str:
        _atomic_save(self.state_dict(), self.ckpt_dir / STATE_FILE)
        return str(self.ckpt_dir)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_flat(state["config"])
        for section in ("data", "model", "distill", "optim"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise ValueError(f"checkpoint {path} was written by a run with a different '{section}' config; "
                                 f"use a fresh run.out_dir or resume=False")
        _unwrap(self.student).load_state_dict(state["model"])
        if self.distiller is not None:
            self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = state["iteration"]
        self.best_miou = state["best_miou"]
        self.curves = state["curves"]
        self.evals = state["evals"]
        self.last_eval = state["last_eval"]
        self.images_seen = state["images_seen"]
        self.train_time = state["train_time"]
        self.wall_time = state["wall_time"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # -- one step -----------------------------------------------------------------------------
    def _upsample(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        return upsample_logits(logits, size, align_corners=self.cfg.model.eval_align_corners)

    @property
    def uses_teacher_cache(self) -> bool:
        """True when the distillation loss reads cached teacher logits instead of a live teacher."""
        return self.teacher_cache is not None and self.distiller is not None and not self.distiller.required_features

    def cached_teacher_output(self, keys: Tensor | None) -> SegOutput | None:
        """The teacher's output for a batch from the cache (rows ``keys``), or None (live teacher)."""
        if keys is None or not self.uses_teacher_cache:
            return None
        assert self.teacher_cache is not None
        return SegOutput(self.teacher_cache.lookup(keys, self.device), None, {})

    @torch.no_grad()
    def live_teacher_output(self, images: Tensor) -> SegOutput:
        """The live teacher's forward under the training autocast (what the step would compute)."""
        if self.teacher is None:
            raise RuntimeError("this run has no live teacher")
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            return self.teacher(images)

    def train_step(self, images: Tensor, labels: Tensor, teacher_output: SegOutput | None = None) -> dict[str, Tensor]:
        """One optimisation step under bf16 autocast (GPU); returns the detached loss terms."""
        self.model.train()
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            terms = distillation_losses(self.model, self.teacher, self.distiller, images, labels,
                                        alpha=self.cfg.distill.effective_alpha, aux_weight=self.cfg.optim.aux_weight,
                                        ignore_index=self.ignore_index, ce=self.ce, teacher_output=teacher_output,
                                        ce_align_corners=self.cfg.model.ce_align_corners,
                                        aux_align_corners=self.cfg.model.aux_align_corners)
        check_finite(terms, self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss/total"].backward()
        self.optimizer.step()
        if self.distiller is not None:  # e.g. the SKD/IFVD critic's step, on this step's logits
            lr_scale = self.optimizer.param_groups[0]["lr"] / self.cfg.optim.lr
            terms.update({f"loss/{k}": v for k, v in self.distiller.after_step(lr_scale).items()})
        return {k: v.detach() for k, v in terms.items()}

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Whole-image evaluation, logits upsampled bilinearly (``model.eval_align_corners``); sharded over
        ranks, all-reduced."""
        self.student.eval()
        acc = EvalAccumulators(
            ConfusionMatrix(self.num_classes, self.ignore_index, self.device),
            TDNTDMeter(self.num_classes, self.cfg.distill.tau, self.ignore_index, self.device) if self.teacher is not None else None,
        )
        indices = list(range(self.rank, len(self.val_ds), self.world))
        batch = self.cfg.optim.batch_size if self.info.val_batchable else 1
        for start in range(0, len(indices), batch):
            items = [self.val_ds[i] for i in indices[start:start + batch]]
            images = torch.stack([x for x, _ in items]).to(self.device, memory_format=self.memory_format)
            labels = torch.stack([y for _, y in items]).to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                s_logits = self.student(images).logits
                t_logits = self.teacher(images).logits if self.teacher is not None else None
            pred = self._upsample(s_logits.float(), labels.shape[-2:]).argmax(1)
            acc.confusion.update(pred, labels)
            if acc.divergence is not None and t_logits is not None:
                acc.divergence.update(s_logits.float(), t_logits.float(), labels)
        if self.world > 1:
            for t in acc.state_tensors():
                dist.all_reduce(t)
        conf = acc.confusion.compute()
        div = acc.divergence.compute() if acc.divergence is not None else None
        return {"conf": conf, "div": div, "per_class": per_class_rows(conf, div, self.info.class_names)}

    @torch.no_grad()
    def collect_extras(self) -> tuple[dict[str, np.ndarray] | None, list[dict[str, np.ndarray]] | None]:
        """Opt-in figure data: sampled per-pixel "head" features with their labels (t-SNE, paper
        Fig. 5) and a few validation predictions (Fig. 4). Deterministic in ``run.seed``."""
        n_pix, n_img = self.cfg.run.embedding_pixels, self.cfg.run.sample_images
        if not n_pix and not n_img:
            return None, None
        self.student.eval()
        feats, labs, samples = [], [], []
        n_sources = min(len(self.val_ds), max(n_img, 8 if n_pix else 0))
        prep = preprocessing_of(self.cfg.data)  # figures show the RGB image, whatever the model's input convention
        for i in range(n_sources):
            image, label = self.val_ds[i]
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                out = self.student(image[None].to(self.device, memory_format=self.memory_format))
            if n_pix:
                f = out.features["head"].float()[0]  # (D, h, w)
                small = F.interpolate(label[None, None].float(), size=f.shape[-2:], mode="nearest")[0, 0].long()
                valid = (small != self.ignore_index) & (small < self.num_classes)
                feats.append(f.permute(1, 2, 0)[valid.to(f.device)].cpu())  # (n_valid, D)
                labs.append(small[valid])
            if i < n_img:
                pred = self._upsample(out.logits.float(), label.shape[-2:]).argmax(1)[0].cpu()
                rgb = prep.invert(image).permute(1, 2, 0)  # (H, W, 3) uint8
                samples.append({"image": rgb.numpy(), "label": label.numpy().astype(np.int16),
                                "prediction": pred.numpy().astype(np.int16)})
        embeddings = None
        if n_pix and feats:
            all_f, all_l = torch.cat(feats), torch.cat(labs)
            g = torch.Generator().manual_seed(_mix_seed(self.cfg.run.seed, 3))
            pick = torch.randperm(len(all_l), generator=g)[:n_pix]
            embeddings = {"features": all_f[pick].numpy(), "labels": all_l[pick].numpy()}
        return embeddings, (samples or None)

    # -- the loop -----------------------------------------------------------------------------
    def _call(self, hook: str, arg: Any) -> bool:
        stop = False
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None and fn(arg):
                stop = True
        return stop

    def _loader(self, start: int, end: int) -> DataLoader:
        cfg = self.cfg
        sampler = _IterationBatches(len(self.train_ds), self.rank_batch, cfg.run.seed, start, end, self.rank, self.world)
        variants = self.teacher_cache.variants if self.teacher_cache is not None else 0
        return DataLoader(_Seeded(self.train_ds, variants), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def batches(self, start: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """``(images, labels, cache keys or None)`` on the device for iterations ``start``.. (default:
        from the current iteration) to the end; the same stream for every run with this data config,
        batch size and seed."""
        first = self.iteration if start is None else start
        for batch in self._loader(first, self.cfg.optim.iterations):
            images = batch[0].to(self.device, non_blocking=True, memory_format=self.memory_format)
            labels = batch[1].to(self.device, non_blocking=True)
            yield images, labels, (batch[2] if len(batch) == 3 else None)

    def run(self, resume: bool = True) -> FitResult:
        self.begin(resume)
        t_data = time.perf_counter()
        for images, labels, keys in self.batches():
            teacher_output = self.cached_teacher_output(keys)
            if self.step(images, labels, teacher_output, extra_seconds=time.perf_counter() - t_data):
                break
            t_data = time.perf_counter()
        return self.end()

    # -- the loop, in pieces a cohort can interleave -------------------------------------------
    def begin(self, resume: bool = True) -> None:
        """Load the checkpoint (``resume``) and start the clocks and the progress bar."""
        cfg = self.cfg
        total = cfg.optim.iterations
        state_path = self.ckpt_dir / STATE_FILE
        if resume and state_path.is_file():
            self.load_checkpoint(state_path)
        self._eval_every = cfg.run.eval_every or total
        self._ckpt_every = cfg.run.checkpoint_every or self._eval_every
        self._stopped_early = False
        self._progress = None
        if cfg.run.progress and self.rank == 0 and self.iteration < total:
            from tqdm.auto import tqdm
            self._progress = tqdm(total=total, initial=self.iteration, desc=f"{cfg.model.arch} [{cfg.distill.method}]",
                                  unit="it", dynamic_ncols=True, leave=False)
        self._run_t0 = time.perf_counter()
        self._window_time, self._window_images = self.train_time, 0

    def step(self, images: Tensor, labels: Tensor, teacher_output: SegOutput | None = None,
             extra_seconds: float = 0.0) -> bool:
        """One iteration: learning rate, optimisation step, curve record, evaluation and checkpoint
        when due. ``extra_seconds`` (data loading, a share of a cohort's teacher forward) is added to
        the training time. Returns True when the run should stop (finished or stopped by a callback)."""
        cfg = self.cfg
        total = cfg.optim.iterations
        t0 = time.perf_counter()
        lr = poly_lr(cfg.optim.lr, self.iteration, total, cfg.optim.power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_mix_seed(cfg.run.seed, 3, self.iteration, self.rank))  # dropout etc. of this iteration
        terms = self.train_step(images, labels, teacher_output)
        self.iteration += 1
        n_img = cfg.optim.batch_size
        self.images_seen += n_img
        self._window_images += n_img
        if self.iteration % cfg.run.log_every == 0 or self.iteration == total:
            record = {"iteration": self.iteration, "lr": lr, **{k: float(v) for k, v in terms.items()}}
            self.train_time += time.perf_counter() - t0 + extra_seconds
            t0, extra_seconds = time.perf_counter(), 0.0
            record["images_per_s"] = self._window_images / max(self.train_time - self._window_time, 1e-9)
            self._window_time, self._window_images = self.train_time, 0
            self.curves.append(record)
            self._call("on_log", record)
            if self._progress is not None:
                self._progress.set_postfix(loss=f"{record['loss/total']:.3f}", lr=f"{lr:.2e}")
        self.train_time += time.perf_counter() - t0 + extra_seconds  # evaluation excluded
        if self._progress is not None:
            self._progress.update(1)
        stop = self.iteration >= total
        if self.iteration % self._eval_every == 0 or self.iteration == total:
            if self._evaluate_and_report(self.iteration % self._ckpt_every == 0 or self.iteration == total):
                self._stopped_early = self.iteration < total
                stop = True
        return stop

    def end(self, wall_seconds: float | None = None) -> FitResult:
        """Final evaluation if the last iteration had none, the model file, and the result.
        ``wall_seconds``: this run's share of the wall time since :meth:`begin` when it shared the
        process with others (a cohort member); default: all of it."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if not self.last_eval or self.last_eval.get("iteration") != self.iteration:
            self._evaluate_and_report(write_checkpoint=True)
        self.wall_time += time.perf_counter() - self._run_t0 if wall_seconds is None else wall_seconds
        self._run_t0 = 0.0
        return self._finish(self._stopped_early)

    def _evaluate_and_report(self, write_checkpoint: bool) -> bool:
        t0 = time.perf_counter()
        ev = self.evaluate()
        self.eval_time += time.perf_counter() - t0
        conf = ev["conf"]
        miou = conf["miou"]
        self.best_miou = max(self.best_miou, miou) if math.isfinite(miou) else self.best_miou
        metrics = {
            "iteration": self.iteration, "val/miou": miou, "val/miou_all_classes": conf["miou_all_classes"],
            "val/pixel_acc": conf["pixel_acc"],
            "val/mean_acc": conf["mean_acc"], "val/best_miou": self.best_miou,
            "val/classes_present": conf["classes_present"],
        }
        self.evals.append(metrics)
        self.last_eval = {**metrics, "per_class": ev["per_class"]}
        if self.curves and self.curves[-1]["iteration"] == self.iteration:
            self.curves[-1]["val/miou"] = miou
        else:
            self.curves.append({"iteration": self.iteration, "val/miou": miou})
        ckpt = self.save_checkpoint() if (write_checkpoint and self.rank == 0) else None
        if self.world > 1 and write_checkpoint:
            dist.barrier()
        event = EvalEvent(self.iteration, {k: float(v) for k, v in metrics.items()}, ckpt, self.rank, self.world)
        return self._call("on_eval", event)

    def _finish(self, stopped_early: bool) -> FitResult:
        cfg = self.cfg
        last = self.last_eval
        model_path = None
        if self.rank == 0:
            model_path = str(save_model_artifact(self.student, cfg, self.out_dir / MODEL_FILE,
                                                 {"miou": last.get("val/miou", float("nan"))}))
        try:
            flops = count_flops(cfg.model.arch, self.num_classes, size=512, output_stride=cfg.model.output_stride)
        except Exception:  # FLOPs are a report, never a reason to lose a finished run
            flops = float("nan")
        embeddings, samples = self.collect_extras() if self.rank == 0 else (None, None)
        device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        result = FitResult(
            config=cfg,
            iterations_done=self.iteration,
            best_miou=self.best_miou,
            final_miou=last.get("val/miou", float("nan")),
            final_miou_all_classes=last.get("val/miou_all_classes", float("nan")),
            effective_alpha=cfg.distill.effective_alpha,
            pixel_acc=last.get("val/pixel_acc", float("nan")),
            per_class=last.get("per_class", []),
            curves=self.curves,
            params=count_params(_unwrap(self.student)),
            flops=flops,
            wall_time_s=self.wall_time,
            images_per_s=self.images_seen / max(self.train_time, 1e-9),
            device=device_name,
            checkpoint_dir=str(self.ckpt_dir),
            model_path=model_path,
            stopped_early=stopped_early,
            evals=self.evals,
            embeddings=embeddings,
            samples=samples,
        )
        self._call("on_end", result)
        return result


def fit(cfg: TrainConfig, callbacks: Sequence[object] = (), *, resume: bool = True) -> FitResult:
    """Train a teacher (``distill.method == 'none'``) or distil a student, and return its results.

    With ``resume=True`` an existing ``run.out_dir/checkpoint/state.pt`` is continued exactly.
    """
    return Trainer(cfg, callbacks).run(resume=resume)
