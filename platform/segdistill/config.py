"""Typed, frozen, validated run configuration.

A :class:`TrainConfig` describes one training run (a teacher trained with CE, or a student distilled
from a frozen teacher). It is built from nested frozen dataclasses, each validated at construction,
and converts losslessly to and from a *flat* dict whose keys are ``"section.field"`` (for example
``"distill.beta"``). The flat dict is what Ray Tune sweeps over and what becomes Parquet columns.
Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

PIXEL_CORRECTIONS = ("n", "none")
ADV_LOSSES = ("hinge", "wgan-gp")
BATCH_COUPLINGS = ("worker", "global")
WEIGHTINGS = ("smooth", "softmax")
CE_IMPLS = ("literal", "blocked")
CHANNEL_ORDERS = ("rgb", "bgr")

# Image preprocessing (``data.*``): x[c] = (pixel[c] / pixel_scale - mean[c]) / std[c], channels in
# ``channel_order``; means and stds are given per colour (R, G, B) on the scale after the division.
PREPROCESSING_KEYS: tuple[str, ...] = ("data.channel_order", "data.pixel_scale", "data.mean_r", "data.mean_g",
                                       "data.mean_b", "data.std_r", "data.std_g", "data.std_b")
# torchvision's ImageNet convention (ToTensor + Normalize): RGB in [0, 1], ImageNet mean / std
IMAGENET_PREPROCESSING: dict[str, Any] = {
    "data.channel_order": "rgb", "data.pixel_scale": 255.0, "data.mean_r": 0.485, "data.mean_g": 0.456,
    "data.mean_b": 0.406, "data.std_r": 0.229, "data.std_g": 0.224, "data.std_b": 0.225}
# the reference code's (docs/REFERENCE.md "Preprocessing"): cv2's BGR on the 0-255 scale minus the
# Caffe BGR means (104.00698793, 116.66876762, 122.67891434), no std
REFERENCE_PREPROCESSING: dict[str, Any] = {
    "data.channel_order": "bgr", "data.pixel_scale": 1.0, "data.mean_r": 122.67891434,
    "data.mean_g": 116.66876762, "data.mean_b": 104.00698793, "data.std_r": 1.0, "data.std_g": 1.0, "data.std_b": 1.0}
# the reference code upsamples logits with align_corners=True for the CE, the aux CE and evaluation
REFERENCE_UPSAMPLING: dict[str, Any] = {
    "model.ce_align_corners": True, "model.aux_align_corners": True, "model.eval_align_corners": True}


def known_methods() -> tuple[str, ...]:
    """'none' plus every method in ``segdistill.losses.METHODS`` (the registry is the truth)."""
    from .losses.distillers import METHODS  # lazy: keeps config importable on its own

    return ("none", *sorted(METHODS))


def known_models() -> tuple[str, ...]:
    """Every architecture in ``segdistill.models.MODELS`` (lazy import, like :func:`known_methods`)."""
    from .models import MODELS

    return tuple(sorted(MODELS))


def known_datasets() -> tuple[str, ...]:
    """Every dataset family in ``segdistill.data.DATASETS`` (lazy import)."""
    from .data import DATASETS

    return tuple(sorted(DATASETS))


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _finite(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, at what size, with which augmentation.

    ``num_classes`` and the ``synthetic_*`` fields only apply to the synthetic dataset; real
    datasets fix their class count. ``crop_size`` is the training crop (paper: 512); evaluation
    uses whole images. ``max_train_images``/``max_val_images`` (0 = all) cap real datasets.

    Preprocessing (every image, train and val): ``x[c] = (pixel[c] / pixel_scale - mean[c]) / std[c]``
    with the channels in ``channel_order`` ('rgb' or 'bgr'); ``mean_r/g/b`` and ``std_r/g/b`` are
    per colour, on the scale after dividing by ``pixel_scale``. Defaults: torchvision's ImageNet
    convention (:data:`IMAGENET_PREPROCESSING`); the reference code's is
    :data:`REFERENCE_PREPROCESSING` (BGR minus the Caffe means, no std), which its checkpoints need.
    """

    name: str = "synthetic"
    root: str = ""
    num_classes: int = 24
    image_size: int = 128
    crop_size: int = 128
    train_images: int = 768
    val_images: int = 96
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    max_train_images: int = 0
    max_val_images: int = 0
    seed: int = 0
    num_workers: int = 0
    channel_order: str = "rgb"
    pixel_scale: float = 255.0
    mean_r: float = 0.485
    mean_g: float = 0.456
    mean_b: float = 0.406
    std_r: float = 0.229
    std_g: float = 0.224
    std_b: float = 0.225

    def __post_init__(self) -> None:
        _check(bool(self.name), "data.name must be a dataset name")
        _check(self.channel_order in CHANNEL_ORDERS,
               f"data.channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        for name in ("pixel_scale", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"):
            _finite(f"data.{name}", getattr(self, name))
        for name in ("pixel_scale", "std_r", "std_g", "std_b"):
            _check(getattr(self, name) > 0, f"data.{name} must be > 0, got {getattr(self, name)}")
        known = known_datasets()
        _check(self.name in known, f"data.name: unknown dataset {self.name!r}; known datasets: {list(known)}")
        _check(2 <= self.num_classes <= 255, f"data.num_classes must be in [2, 255], got {self.num_classes}")
        _check(self.image_size >= 16, f"data.image_size must be >= 16, got {self.image_size}")
        _check(self.crop_size >= 16, f"data.crop_size must be >= 16, got {self.crop_size}")
        _check(self.train_images >= 1 and self.val_images >= 1, "data.train_images and data.val_images must be >= 1")
        _check(0 < self.scale_min <= self.scale_max, f"need 0 < data.scale_min <= data.scale_max, got {self.scale_min}, {self.scale_max}")
        _check(self.max_train_images >= 0 and self.max_val_images >= 0, "data.max_*_images must be >= 0 (0 = all)")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """A segmentation network from ``segdistill.models.MODELS``.

    ``pretrained``: a local ImageNet backbone file ('' = random init): the reference code's
    (``resnet18-imagenet.pth``, ``resnet101-imagenet.pth``, ``mobilenetv2-imagenet.pth``; for the paper
    models) or torchvision's (for ``*_tv_*`` and ``*_mbv2``), or a directory holding the reference
    files under those names. ``output_stride`` is 8 for the paper's models; tiny CPU variants also
    allow 4.
    ``ce_align_corners`` / ``aux_align_corners`` / ``eval_align_corners``: ``align_corners`` of the
    bilinear upsampling of the (B, C, H/os, W/os) logits to the label size for the CE (paper Eq. 1),
    the aux head's CE and evaluation. False by default; the reference code uses True for all three
    (:data:`REFERENCE_UPSAMPLING`).
    """

    arch: str = "deeplabv3_tiny_r18"
    pretrained: str = ""
    output_stride: int = 8
    aux: bool = True
    ce_align_corners: bool = False
    aux_align_corners: bool = False
    eval_align_corners: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.arch), "model.arch must be a registered model name")
        known = known_models()
        _check(self.arch in known, f"model.arch: unknown model {self.arch!r}; known models: {list(known)}")
        _check(self.output_stride in (4, 8, 16), f"model.output_stride must be 4, 8 or 16, got {self.output_stride}")


@dataclass(frozen=True)
class DistillConfig:
    """The distillation method and its hyperparameters (paper Sec. III, supplement Table I).

    ``method``: 'none' (CE only: a baseline student or a teacher) or a ``METHODS`` name: 'kd',
    'cwd', 'hwd' and the comparison methods 'skd', 'ifvd', 'cirkd', 'mgd', 'dist'.
    ``alpha`` weights the method loss in ``CE + alpha * L_distill`` (paper Eq. 8). ``None`` (the
    default) means the method's reference weight, 3 for CWD/HWD and 1 for the others
    (``segdistill.losses.reference_alpha``); :attr:`effective_alpha` is the one place that resolves it.
    HWD: ``tau`` (activation temperature), ``mu``/``sigma`` (Eq. 6), ``beta`` (Eq. 7),
    ``pixel_correction`` 'n' = paper's CD/(N_c+1), 'none' = released code's recipe,
    ``weighting`` 'smooth' = Eq. 7, 'softmax' = Fig. 6's alternative with temperature ``tau_prime``.
    ``teacher_checkpoint`` is required when method != 'none'; its architecture is ``teacher_arch``.
    ``batch_coupling``: the images the batch-coupled terms (CIRKD's mini-batch pairs, DIST's
    intra-class relation) relate under data parallelism: 'worker' (each worker's own images, as the
    reference's 4 GPUs x 2 images) or 'global' (every worker's, gathered differentiably). With one
    worker both are the whole batch.
    Every default and the reference's value: docs/METHODS.md.
    """

    method: str = "none"
    alpha: float | None = None  # None = the method's reference weight (effective_alpha)
    tau: float = 4.0
    mu: float = 0.0
    sigma: float = 1.0
    beta: float = 0.1
    pixel_correction: str = "n"
    weighting: str = "smooth"
    tau_prime: float = 1.0
    kd_temperature: float = 1.0
    teacher_arch: str = ""
    teacher_checkpoint: str = ""
    # Comparison methods (losses/distillers.py; defaults = the reference recipe, docs/METHODS.md). Their
    # reference ``alpha`` is 1 (``segdistill.losses.reference_alpha``): the terms carry their weights.
    feature: str = ""  # feature tap of skd/ifvd/cirkd/mgd; '' = the method's reference tap ('head')
    kd_weight: float = 1.0  # pixel-KD term inside skd, ifvd, cirkd
    skd_pair_pool: int = 2  # max-pool window before SKD's pair-wise similarities (reference 2x2)
    cirkd_pair_pool: int = 1  # max-pool window before CIRKD's mini-batch pairs (reference: none = 1)
    batch_coupling: str = "worker"  # cirkd pairs / dist intra over each worker's images ('worker', reference) or 'global'
    skd_pair_weight: float = 10.0
    adv_loss: str = "hinge"  # skd/ifvd critic: 'hinge' (reference) or 'wgan-gp' (+ gradient penalty)
    adv_g_weight: float = 1e-3  # skd/ifvd: student's adversarial term
    adv_d_weight: float = 0.1  # skd/ifvd: critic loss weight
    adv_gp_weight: float = 10.0  # skd/ifvd: WGAN-GP gradient penalty (adv_loss='wgan-gp' only)
    adv_lr: float = 4e-4  # skd/ifvd: critic's Adam learning rate (poly-decayed with the student's)
    ifvd_weight: float = 20.0
    cirkd_pair_weight: float = 1.0
    cirkd_pixel_weight: float = 0.1
    cirkd_region_weight: float = 0.1
    cirkd_pair_tau: float = 0.1
    cirkd_contrast_tau: float = 0.1
    cirkd_contrast_kd_tau: float = 1.0
    cirkd_pixel_memory: int = 2000  # entries per class (reference 20000)
    cirkd_region_memory: int = 200  # entries per class (reference 2000)
    cirkd_pixel_contrast: int = 0  # sampled per class per step (at most the memory); 0 = 4096 // C + 1 (reference)
    cirkd_region_contrast: int = 0  # sampled per class per step (at most the memory); 0 = 1024 // C + 1 (reference)
    cirkd_anchors: int = 0  # anchor pixels per step, 0 = every valid pixel (reference)
    cirkd_max_memory_mb: float = 1024.0  # refuse queues larger than this
    mgd_weight: float = 2e-5
    mgd_mask_ratio: float = 0.75
    dist_inter_weight: float = 1.0
    dist_intra_weight: float = 1.0

    def __post_init__(self) -> None:
        self._check_comparison_methods()
        known = known_methods()
        _check(self.method in known, f"distill.method must be one of {known}, got {self.method!r}")
        if self.alpha is not None:
            _finite("distill.alpha", self.alpha)
            _check(self.alpha >= 0, f"distill.alpha must be >= 0 (or None: the method's reference weight), got {self.alpha}")
        for name in ("tau", "mu", "sigma", "beta", "tau_prime", "kd_temperature"):
            _finite(f"distill.{name}", getattr(self, name))
        _check(self.tau > 0, f"distill.tau must be > 0, got {self.tau}")
        _check(self.sigma > 0, f"distill.sigma must be > 0, got {self.sigma}")
        _check(0 < self.beta < 1, f"distill.beta must be in (0, 1), got {self.beta}")
        _check(self.tau_prime > 0, f"distill.tau_prime must be > 0, got {self.tau_prime}")
        _check(self.kd_temperature > 0, f"distill.kd_temperature must be > 0, got {self.kd_temperature}")
        _check(self.pixel_correction in PIXEL_CORRECTIONS,
               f"distill.pixel_correction must be one of {PIXEL_CORRECTIONS}, got {self.pixel_correction!r}")
        _check(self.weighting in WEIGHTINGS, f"distill.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.method != "none":
            _check(bool(self.teacher_arch), f"distill.method={self.method!r} needs distill.teacher_arch")
            _check(bool(self.teacher_checkpoint), f"distill.method={self.method!r} needs distill.teacher_checkpoint")
        if self.teacher_arch:
            models = known_models()
            _check(self.teacher_arch in models,
                   f"distill.teacher_arch: unknown model {self.teacher_arch!r}; known models: {list(models)}")

    @property
    def effective_alpha(self) -> float:
        """The weight of ``L_distill`` this config trains with: ``alpha`` when set, else the method's
        reference weight (``segdistill.losses.reference_alpha``; 0 for 'none'). The only place the
        default is resolved (trainer, CLI, presets and Python API all read it from here)."""
        if self.alpha is not None:
            return float(self.alpha)
        if self.method == "none":
            return 0.0
        from .losses.distillers import reference_alpha  # lazy: keeps config importable on its own

        return reference_alpha(self.method)

    def _check_comparison_methods(self) -> None:
        """Ranges of the comparison methods' fields (skd, ifvd, cirkd, mgd, dist)."""
        from .models.segmentor import FEATURE_NAMES  # lazy: keeps config importable on its own

        _check(self.feature == "" or self.feature in FEATURE_NAMES,
               f"distill.feature must be '' (the method's reference tap) or one of {FEATURE_NAMES}, got {self.feature!r}")
        for name in ("kd_weight", "skd_pair_weight", "adv_g_weight", "adv_d_weight", "adv_gp_weight", "ifvd_weight",
                     "cirkd_pair_weight", "cirkd_pixel_weight", "cirkd_region_weight", "mgd_weight",
                     "dist_inter_weight", "dist_intra_weight"):
            value = getattr(self, name)
            _finite(f"distill.{name}", value)
            _check(value >= 0, f"distill.{name} must be >= 0, got {value}")
        for name in ("adv_lr", "cirkd_pair_tau", "cirkd_contrast_tau", "cirkd_contrast_kd_tau", "cirkd_max_memory_mb"):
            value = getattr(self, name)
            _finite(f"distill.{name}", value)
            _check(value > 0, f"distill.{name} must be > 0, got {value}")
        for name in ("skd_pair_pool", "cirkd_pair_pool"):
            _check(1 <= getattr(self, name) <= 64, f"distill.{name} must be in [1, 64], got {getattr(self, name)}")
        _check(self.adv_loss in ADV_LOSSES, f"distill.adv_loss must be one of {ADV_LOSSES}, got {self.adv_loss!r}")
        _check(self.batch_coupling in BATCH_COUPLINGS,
               f"distill.batch_coupling must be one of {BATCH_COUPLINGS}, got {self.batch_coupling!r}")
        for name in ("cirkd_pixel_memory", "cirkd_region_memory"):
            _check(getattr(self, name) >= 1, f"distill.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cirkd_pixel_contrast", "cirkd_region_contrast"):
            _check(getattr(self, name) >= 0, f"distill.{name} must be >= 0 (0 = the reference's size), got {getattr(self, name)}")
        _check(self.cirkd_anchors >= 0, f"distill.cirkd_anchors must be >= 0 (0 = all valid pixels), got {self.cirkd_anchors}")
        _finite("distill.mgd_mask_ratio", self.mgd_mask_ratio)
        _check(0 <= self.mgd_mask_ratio < 1, f"distill.mgd_mask_ratio must be in [0, 1), got {self.mgd_mask_ratio}")


@dataclass(frozen=True)
class OptimConfig:
    """SGD with poly decay, iteration-based (supplement Sec. III: lr 0.01, momentum 0.9, wd 1e-4,
    batch 8, 40k iterations, power 0.9). ``batch_size`` is the global batch, split evenly over
    data-parallel workers. ``aux_weight`` is the auxiliary FCN head's CE weight. ``sync_bn``: with
    more than one data-parallel worker, the student's BatchNorm layers normalise with statistics over
    every worker's images (SyncBatchNorm, as the reference's 4-GPU runs: train_*.py ``BatchNorm2d =
    nn.SyncBatchNorm if args.distributed``); no effect on one worker. Off by default, on in the
    paper/released presets."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    iterations: int = 400
    batch_size: int = 8
    aux_weight: float = 0.4
    sync_bn: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "power", "aux_weight"):
            _finite(f"optim.{name}", getattr(self, name))
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(self.power >= 0, "optim.power must be >= 0")
        _check(self.iterations >= 1, f"optim.iterations must be >= 1, got {self.iterations}")
        _check(self.batch_size >= 2, f"optim.batch_size must be >= 2 (BatchNorm in the pooling branches), got {self.batch_size}")
        _check(self.aux_weight >= 0, "optim.aux_weight must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run executes.

    ``eval_every`` (iterations; 0 = only at the end), ``checkpoint_every`` (0 = at each eval),
    ``device`` 'auto' | 'cpu' | 'cuda' | 'cuda:N', ``amp`` bf16 autocast (GPU only),
    ``channels_last`` (GPU only), ``compile`` torch.compile the student, ``compile_loss`` torch.compile the full-resolution
    upsample + CE (GPU only; same maths, fused kernels), ``log_every`` iterations
    between per-iteration curve records, ``progress`` show a progress bar.
    ``ce_impl`` how the full-resolution CE of Eq. (1) is computed: 'literal' (upsample, then CE) or
    'blocked' (:mod:`segdistill.upsample_ce`: same loss and gradient via separable interpolation
    matmuls, full-resolution rows a block at a time). ``teacher_cache`` a directory for cached teacher
    logits, shared by the trials of a study; used when the training augmentation has finitely many
    outcomes (fixed scale, no random crop) and the method needs only the teacher's logits ('' = off).
    ``deterministic`` (GPU) trade speed for run-to-run repeatability: cuDNN autotuning off, deterministic
    cuDNN/cuBLAS kernels where they exist (ops without one, such as bilinear upsampling's backward, warn).
    """

    seed: int = 0
    out_dir: str = "runs/default"
    eval_every: int = 100
    checkpoint_every: int = 0
    log_every: int = 10
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_loss: bool = True
    threads: int = 0
    progress: bool = True
    embedding_pixels: int = 0
    sample_images: int = 0
    ce_impl: str = "literal"
    teacher_cache: str = ""
    deterministic: bool = False

    def __post_init__(self) -> None:
        _check(self.ce_impl in CE_IMPLS, f"run.ce_impl must be one of {CE_IMPLS}, got {self.ce_impl!r}")
        _check(self.embedding_pixels >= 0 and self.sample_images >= 0, "run.embedding_pixels/sample_images must be >= 0")
        _check(bool(self.out_dir), "run.out_dir must be a directory path")
        _check(self.eval_every >= 0 and self.checkpoint_every >= 0, "run.eval_every/checkpoint_every must be >= 0")
        _check(self.log_every >= 1, "run.log_every must be >= 1")
        _check(self.threads >= 0, "run.threads must be >= 0 (0 = torch default)")
        dev = self.device
        _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
               f"run.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One run: data + student (or teacher) model + distillation + optimiser + run settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check(isinstance(value, _SECTIONS[f.name]),
                   f"TrainConfig.{f.name} must be a {_SECTIONS[f.name].__name__}, got {type(value).__name__}")

    # -- flat dict round trip -------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """``{"data.name": "synthetic", ..., "distill.beta": 0.1, ...}``: every field, scalars only."""
        out: dict[str, Any] = {}
        for section in fields(self):
            obj = getattr(self, section.name)
            for f in fields(obj):
                out[f"{section.name}.{f.name}"] = getattr(obj, f.name)
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Build from a flat dict; keys missing from ``flat`` come from ``base`` (default: defaults).

        Raises :class:`ConfigError` on unknown keys or values of the wrong type.
        """
        return (base or cls()).replace(**flat)

    def replace(self, **flat: Any) -> "TrainConfig":
        """``cfg.replace(**{"distill.beta": 0.3})``: a new config with flat keys overridden."""
        updates: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS or not name:
                raise ConfigError(f"unknown config key {key!r}{_nearest_key(key)}; keys look like 'section.field' with "
                                  f"section in {sorted(_SECTIONS)}")
            known = {f.name: f for f in fields(_SECTIONS[section])}
            if key in RETIRED_KEYS:
                raise ConfigError(f"config key {key!r} no longer exists: {RETIRED_KEYS[key]}")
            if name not in known:
                raise ConfigError(f"unknown config key {key!r}{_nearest_key(key)}; {section} fields are {sorted(known)}")
            updates.setdefault(section, {})[name] = _coerce(key, value, getattr(getattr(self, section), name))
        sections = {s: dataclasses.replace(getattr(self, s), **u) for s, u in updates.items()}
        return dataclasses.replace(self, **sections)

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_flat(json.loads(text))


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "distill": DistillConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


# keys of earlier versions, with what replaced them (a clear error instead of 'unknown key')
RETIRED_KEYS: dict[str, str] = {
    "distill.pair_pool": "it was split into distill.skd_pair_pool (default 2, SKD's reference) and "
                         "distill.cirkd_pair_pool (default 1 = unpooled, CIRKD's reference); docs/METHODS.md",
}

# float fields that may also be None (None has a documented meaning; see the field's docstring)
OPTIONAL_FLOAT_KEYS: frozenset[str] = frozenset({"distill.alpha"})


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Accept ints for float fields and numpy scalars (Ray/Optuna hand those out); reject the rest."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if key in OPTIONAL_FLOAT_KEYS:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "reference")) \
                or (isinstance(value, float) and math.isnan(value)):  # NaN: a missing Parquet cell
            return None
        current = 0.0
    kind = type(current)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be a bool, got {value!r}")
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r} ({type(value).__name__})")


def _nearest_key(key: str) -> str:
    """``"; did you mean 'distill.beta'?"`` for a mistyped flat key (difflib), else ''."""
    import difflib

    keys = [f"{sec}.{f.name}" for sec, cls in _SECTIONS.items() for f in fields(cls)]
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
