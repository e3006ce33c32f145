"""Typed, frozen, validated run configuration.

A :class:`TrainConfig` describes one training run (a teacher trained with CE, or a student distilled
from a frozen teacher). It is built from nested frozen dataclasses, each validated at construction,
and converts losslessly to and from a *flat* dict whose keys are ``"section.field"`` (for example
``"distill.beta"``). The flat dict is what Ray Tune sweeps over and what becomes Parquet columns.
Unknown keys are errors, never silently ignored.

The ``distill`` section holds what every run shares (``method``, ``alpha``, the teacher) and
``params``: the parameter dataclass of the method (``HWDParams``, ``CWDParams``, ...), owned and
validated by the method's file in :mod:`segdistill.losses` and named by its registry
(:mod:`segdistill.losses.registry`). Its fields keep the flat keys ``distill.<field>``; a config
carries only its own method's (see :meth:`TrainConfig.replace`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .errors import ConfigError, check, check_finite
from .losses.params import MethodParams
from .losses.registry import METHODS, NO_METHOD, params_class, reference_alpha

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
    return (NO_METHOD, *sorted(METHODS))


def known_models() -> tuple[str, ...]:
    """Every architecture in ``segdistill.models.MODELS`` (lazy import, like :func:`known_methods`)."""
    from .models import MODELS

    return tuple(sorted(MODELS))


def known_datasets() -> tuple[str, ...]:
    """Every dataset family in ``segdistill.data.DATASETS`` (lazy import)."""
    from .data import DATASETS

    return tuple(sorted(DATASETS))


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
        check(bool(self.name), "data.name must be a dataset name")
        check(self.channel_order in CHANNEL_ORDERS,
               f"data.channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        for name in ("pixel_scale", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"):
            check_finite(f"data.{name}", getattr(self, name))
        for name in ("pixel_scale", "std_r", "std_g", "std_b"):
            check(getattr(self, name) > 0, f"data.{name} must be > 0, got {getattr(self, name)}")
        known = known_datasets()
        check(self.name in known, f"data.name: unknown dataset {self.name!r}; known datasets: {list(known)}")
        check(2 <= self.num_classes <= 255, f"data.num_classes must be in [2, 255], got {self.num_classes}")
        check(self.image_size >= 16, f"data.image_size must be >= 16, got {self.image_size}")
        check(self.crop_size >= 16, f"data.crop_size must be >= 16, got {self.crop_size}")
        check(self.train_images >= 1 and self.val_images >= 1, "data.train_images and data.val_images must be >= 1")
        check(0 < self.scale_min <= self.scale_max, f"need 0 < data.scale_min <= data.scale_max, got {self.scale_min}, {self.scale_max}")
        check(self.max_train_images >= 0 and self.max_val_images >= 0, "data.max_*_images must be >= 0 (0 = all)")
        check(self.num_workers >= 0, "data.num_workers must be >= 0")


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
        check(bool(self.arch), "model.arch must be a registered model name")
        known = known_models()
        check(self.arch in known, f"model.arch: unknown model {self.arch!r}; known models: {list(known)}")
        check(self.output_stride in (4, 8, 16), f"model.output_stride must be 4, 8 or 16, got {self.output_stride}")


@dataclass(frozen=True, init=False)
class DistillConfig:
    """The distillation method, its weight, its teacher and its parameters (paper Sec. III,
    supplement Table I).

    ``method``: 'none' (CE only: a baseline student or a teacher) or a ``METHODS`` name: 'kd',
    'cwd', 'hwd' and the comparison methods 'skd', 'ifvd', 'cirkd', 'mgd', 'dist'.
    ``alpha`` weights the method loss in ``CE + alpha * L_distill`` (paper Eq. 8). ``None`` (the
    default) means the method's reference weight, 3 for CWD/HWD and 1 for the others
    (``segdistill.losses.reference_alpha``); :attr:`effective_alpha` is the one place that resolves it.
    ``teacher_checkpoint`` is required when method != 'none'; its architecture is ``teacher_arch``.
    ``params``: the method's parameter dataclass (``segdistill.losses.params_class(method)``, e.g.
    ``HWDParams``; the empty ``MethodParams`` for 'none'), validated by itself. Every default and
    the reference's value: docs/METHODS.md.

    Built as ``DistillConfig(method="hwd", teacher_arch=..., teacher_checkpoint=..., beta=0.3)``:
    keywords other than the four shared fields are the method's parameters, applied over ``params=``
    (default: the method's defaults); so ``dataclasses.replace(cfg, beta=0.3)`` works too.
    """

    method: str = NO_METHOD
    alpha: float | None = None  # None = the method's reference weight (effective_alpha)
    teacher_arch: str = ""
    teacher_checkpoint: str = ""
    params: MethodParams = field(default_factory=MethodParams)

    def __init__(self, method: str = NO_METHOD, alpha: float | None = None, teacher_arch: str = "",
                 teacher_checkpoint: str = "", params: MethodParams | None = None, **param_values: Any) -> None:
        _check_method(method)
        kind = params_class(method)
        params = kind() if params is None else params
        check(type(params) is kind, f"distill.params of method {method!r} must be a {kind.__name__}, "
                                    f"got {type(params).__name__}")
        for name in param_values:
            check(name in param_fields(method), _foreign_message(name, method))
        params = dataclasses.replace(params, **param_values) if param_values else params
        for name, value in (("method", method), ("alpha", alpha), ("teacher_arch", teacher_arch),
                            ("teacher_checkpoint", teacher_checkpoint), ("params", params)):
            object.__setattr__(self, name, value)
        self._check_shared()

    def _check_shared(self) -> None:
        """Ranges of the fields every method shares (the method's own parameters check themselves)."""
        if self.alpha is not None:
            check_finite("distill.alpha", self.alpha)
            check(self.alpha >= 0, f"distill.alpha must be >= 0 (or None: the method's reference weight), got {self.alpha}")
        if self.method != NO_METHOD:
            check(bool(self.teacher_arch), f"distill.method={self.method!r} needs distill.teacher_arch")
            check(bool(self.teacher_checkpoint), f"distill.method={self.method!r} needs distill.teacher_checkpoint")
        if self.teacher_arch:
            models = known_models()
            check(self.teacher_arch in models,
                   f"distill.teacher_arch: unknown model {self.teacher_arch!r}; known models: {list(models)}")

    @property
    def effective_alpha(self) -> float:
        """The weight of ``L_distill`` this config trains with: ``alpha`` when set, else the method's
        reference weight (``segdistill.losses.reference_alpha``; 0 for 'none'). The only place the
        default is resolved (trainer, CLI, presets and Python API all read it from here)."""
        if self.alpha is not None:
            return float(self.alpha)
        if self.method == NO_METHOD:
            return 0.0
        return reference_alpha(self.method)

    def to_flat(self) -> dict[str, Any]:
        """The shared fields and this method's parameters, as ``{"method": ..., "beta": ...}``."""
        out = {name: getattr(self, name) for name in DISTILL_SHARED_FIELDS}
        out.update({f.name: getattr(self.params, f.name) for f in fields(self.params)})
        return out

    def updated(self, values: Mapping[str, Any]) -> "DistillConfig":
        """A copy with ``values`` (field name -> raw value, from flat ``distill.*`` keys) applied.

        ``method`` is applied first; when it changes, the parameters start from the new method's
        defaults. A parameter of another method is ignored when its value is missing (None or NaN:
        a Parquet cell of a row of another method) and an error otherwise."""
        values = dict(values)
        method = _coerce("distill.method", values.pop("method"), self.method) if "method" in values else self.method
        _check_method(method)
        params = self.params if method == self.method else params_class(method)()
        own = param_fields(method)
        shared: dict[str, Any] = {}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            key = f"distill.{name}"
            if name in DISTILL_SHARED_FIELDS:
                shared[name] = _coerce(key, value, getattr(self, name))
            elif name in own:
                changes[name] = _coerce(key, value, getattr(params, name))
            elif not _is_missing(value):
                raise ConfigError(_foreign_message(name, method))
        return DistillConfig(method=method, params=dataclasses.replace(params, **changes),
                             **{n: shared.get(n, getattr(self, n)) for n in ("alpha", "teacher_arch", "teacher_checkpoint")})


DISTILL_SHARED_FIELDS: tuple[str, ...] = ("method", "alpha", "teacher_arch", "teacher_checkpoint")


def _check_method(method: str) -> None:
    known = known_methods()
    check(method in known, f"distill.method must be one of {known}, got {method!r}")


def param_fields(method: str) -> frozenset[str]:
    """The parameter names of ``method`` (its dataclass's fields; none for 'none')."""
    return frozenset(f.name for f in fields(params_class(method)))


def param_owners(name: str) -> tuple[str, ...]:
    """The methods that have a parameter called ``name``, sorted."""
    return tuple(m for m in sorted(METHODS) if name in param_fields(m))


def own_method_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` without the parameters of methods other than its ``distill.method``: a flat dict
    written when every config carried every method's parameters (checkpoints of earlier versions)
    read as one of today's."""
    method = flat.get("distill.method", NO_METHOD)
    own = param_fields(method) if method in known_methods() else frozenset()
    return {k: v for k, v in flat.items()
            if not (k.startswith("distill.") and param_owners(k.partition(".")[2]) and k.partition(".")[2] not in own)}


def _foreign_message(name: str, method: str) -> str:
    owners = param_owners(name)
    if not owners:
        return f"unknown config key 'distill.{name}'{_nearest_key(f'distill.{name}')}"
    return (f"distill.{name} is a parameter of {', '.join(owners)}, not of {method}; set distill.method to "
            f"the method it is for (in the same replace) or drop the key")


def _is_missing(value: Any) -> bool:
    """None or NaN: an unset value (a Parquet cell of a row that does not have this column's field)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    return value is None or (isinstance(value, float) and math.isnan(value))


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
            check_finite(f"optim.{name}", getattr(self, name))
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        check(self.power >= 0, "optim.power must be >= 0")
        check(self.iterations >= 1, f"optim.iterations must be >= 1, got {self.iterations}")
        check(self.batch_size >= 2, f"optim.batch_size must be >= 2 (BatchNorm in the pooling branches), got {self.batch_size}")
        check(self.aux_weight >= 0, "optim.aux_weight must be >= 0")


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
        check(self.ce_impl in CE_IMPLS, f"run.ce_impl must be one of {CE_IMPLS}, got {self.ce_impl!r}")
        check(self.embedding_pixels >= 0 and self.sample_images >= 0, "run.embedding_pixels/sample_images must be >= 0")
        check(bool(self.out_dir), "run.out_dir must be a directory path")
        check(self.eval_every >= 0 and self.checkpoint_every >= 0, "run.eval_every/checkpoint_every must be >= 0")
        check(self.log_every >= 1, "run.log_every must be >= 1")
        check(self.threads >= 0, "run.threads must be >= 0 (0 = torch default)")
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
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
            check(isinstance(value, _SECTIONS[f.name]),
                   f"TrainConfig.{f.name} must be a {_SECTIONS[f.name].__name__}, got {type(value).__name__}")

    @property
    def eval_period(self) -> int:
        """Iterations between evaluations: ``run.eval_every``, or the whole run when that is 0."""
        return self.run.eval_every or self.optim.iterations

    @property
    def checkpoint_period(self) -> int:
        """Iterations between checkpoints: ``run.checkpoint_every``, or every evaluation when that is 0."""
        return self.run.checkpoint_every or self.eval_period

    # -- flat dict round trip -------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """``{"data.name": "synthetic", ..., "distill.beta": 0.1, ...}``: every field, scalars only;
        of the ``distill`` parameters only the config's own method's (``flat_keys()`` lists all)."""
        out: dict[str, Any] = {}
        for section in fields(self):
            obj = getattr(self, section.name)
            values = obj.to_flat() if isinstance(obj, DistillConfig) else {f.name: getattr(obj, f.name) for f in fields(obj)}
            out.update({f"{section.name}.{name}": value for name, value in values.items()})
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Build from a flat dict; keys missing from ``flat`` come from ``base`` (default: defaults).

        Raises :class:`ConfigError` on unknown keys or values of the wrong type.
        """
        return (base or cls()).replace(**flat)

    def replace(self, **flat: Any) -> "TrainConfig":
        """``cfg.replace(**{"distill.beta": 0.3})``: a new config with flat keys overridden.

        ``distill.*`` keys follow :meth:`DistillConfig.updated`: ``distill.method`` first (a new
        method starts from its parameters' defaults), then the shared fields and the method's own
        parameters; another method's parameter is skipped when None/NaN and an error otherwise."""
        updates: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS or not name:
                raise ConfigError(f"unknown config key {key!r}{_nearest_key(key)}; keys look like 'section.field' with "
                                  f"section in {sorted(_SECTIONS)}")
            known = _section_fields(section)
            if key in RETIRED_KEYS:
                raise ConfigError(f"config key {key!r} no longer exists: {RETIRED_KEYS[key]}")
            if name not in known:
                raise ConfigError(f"unknown config key {key!r}{_nearest_key(key)}; {section} fields are {sorted(known)}")
            if section == "distill":
                updates.setdefault(section, {})[name] = value  # coerced by DistillConfig.updated
            else:
                updates.setdefault(section, {})[name] = _coerce(key, value, getattr(getattr(self, section), name))
        sections = {s: self.distill.updated(u) if s == "distill" else dataclasses.replace(getattr(self, s), **u)
                    for s, u in updates.items()}
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


def _section_fields(section: str) -> frozenset[str]:
    """The field names of a section; for ``distill``, the shared fields and every method's parameters."""
    if section == "distill":
        return frozenset(DISTILL_SHARED_FIELDS).union(*(param_fields(m) for m in METHODS))
    return frozenset(f.name for f in fields(_SECTIONS[section]))


def flat_keys() -> tuple[str, ...]:
    """Every flat key a config accepts (``distill.*``: every method's parameters), sorted."""
    return tuple(sorted(f"{section}.{name}" for section in _SECTIONS for name in _section_fields(section)))


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
    keys = flat_keys()
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
