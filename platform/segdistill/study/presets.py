"""The presets every experiment script offers: ``smoke``, ``demo``, ``paper`` and ``released``.

- ``smoke``: plumbing check for CI, about a minute on 2 CPU cores: 64x64 synthetic images, 8
  classes, tiny models (the teacher is a tiny R18 as well, trained 20 iterations in seconds), 10
  student iterations, one seed, inline trials.
- ``demo`` (default): the synthetic benchmark at its designed size (128x128, 24 classes; label
  ceiling 0.99 at output stride 8), flip-only augmentation (teacher logits cached, grid ablations
  trained as cohorts), tiny students (200 iterations) distilled from a tiny R101
  teacher (300 iterations, trained once into the zoo), 2 seeds (``--seeds N`` for more) so every
  setting is reported as mean +/- std and differences are tested against seed noise.
  Inline trials, one CPU each (a quarter GPU each when a GPU is present).
- ``paper``: the paper's recipe (supplement Sec. III): a real dataset under ``--data-root``,
  512x512 crops, batch 8, SGD lr 0.01, 40k iterations, paper models (DeepLabV3-R101 teacher ->
  DeepLabV3-R18 student; the reference code's networks), the reference code's input preprocessing
  (BGR minus the Caffe means, no std) and ``align_corners=True`` upsampling for the CE, the aux CE
  and evaluation (docs/REFERENCE.md), bf16 on GPUs; Train-backed trials with one GPU worker each
  (``--workers N`` for DDP over N GPUs per trial). ``--pretrained`` (the reference's ImageNet
  backbone files) and ``--teacher-checkpoint`` (e.g. a released reference teacher) give the
  starting weights; docs/REPRODUCING.md walks through one Table II row.
- ``released``: the ``paper`` preset with HWD as the authors' released command runs it (README.md:45
  of zju-SWJ/HWD: ``--activation --L MSE --process E --parameter 0.1 --shift 1.0 --DivPixel None``):
  mu = 1 (``--shift 1.0``) and no N_c correction (``--DivPixel None``), evaluation every 400 iterations
  (train_hwd.py:70 ``--val-per-iters``); default dataset Cityscapes (train_hwd.py:41, the README's
  command). This is the recipe the published numbers came from (docs/METHODS.md).
Both real-data presets train the student with SyncBatchNorm when a trial has more than one worker
(``optim.sync_bn``, as the reference's 4-GPU runs, train_hwd.py:150).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..catalog import REPORTED_METRIC  # noqa: F401 - re-exported: the metric the scripts report
from ..config import REFERENCE_PREPROCESSING, REFERENCE_UPSAMPLING, TrainConfig
from ..losses import MethodParams, params_class, reference_alpha
from .spec import Resources, TeacherRecipe

PRESETS = ("smoke", "demo", "paper", "released")
REAL_DATA_PRESETS = ("paper", "released")
PAPER_DATASETS = ("ade20k", "cityscapes", "cocostuff")
# docs/REFERENCE.md "Hyperparameters": mu per dataset for DeepLab-R18 (0 on ADE20K, 1 on Cityscapes, 0.1 on COCO-Stuff)
PAPER_MU = {"ade20k": 0.0, "cityscapes": 1.0, "cocostuff": 0.1, "synthetic": 0.0}


@dataclass(frozen=True)
class Preset:
    name: str
    base: TrainConfig  # student defaults: method 'none'; scripts set the method per variant
    teacher: TeacherRecipe
    seeds: tuple[int, ...]
    shape: str
    resources: Resources
    students: tuple[str, ...]  # student architectures for compare_methods
    subset: bool  # smoke: scripts run a tiny subset of their grids
    # per method, the flat ``distill.*`` parameters its variants start from (the base's method is
    # 'none', which has no parameters): e.g. the paper's mu per dataset for HWD
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Preset":
        return dataclasses.replace(self, **changes)

    def params(self, method: str) -> MethodParams:
        """The parameters a ``method`` variant of this preset starts from (its defaults + ``method_params``)."""
        given = self.method_params.get(method, {})
        return params_class(method)(**{key.partition(".")[2]: value for key, value in given.items()})

    def variants(self, variants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``variants`` (flat overrides of ``base``), each under the preset's parameters of its method;
        the variant's own keys win."""
        return [{**self.method_params.get(v.get("distill.method", self.base.distill.method), {}), **v} for v in variants]


def _gpu_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def get_preset(name: str, *, data_root: str = "", dataset: str | None = None, seeds: int | None = None,
               shape: str | None = None, workers: int | None = None, gpus: float | None = None,
               cpus: float | None = None, iterations: int | None = None, pretrained: str | None = None,
               teacher_checkpoint: str | None = None, teacher_arch: str | None = None) -> Preset:
    """The named preset, with command-line overrides applied (None = keep the preset's value).

    ``pretrained``: ``model.pretrained`` of the students (a backbone file, or a directory holding the
    reference's ImageNet files, which serves every student architecture). ``teacher_checkpoint``:
    distil from this file (a segdistill ``model.pt`` or a reference-code checkpoint) instead of a
    zoo teacher; its architecture is ``teacher_arch`` (default: the preset's teacher)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {PRESETS}")
    if name == "smoke":
        p = _smoke()
    elif name == "demo":
        p = _demo()
    elif name == "paper":
        p = _paper(dataset or "ade20k", data_root)
    else:
        p = _released(dataset or "cityscapes", data_root)
    if name not in REAL_DATA_PRESETS and dataset and dataset != "synthetic":
        p = p.replace(base=p.base.replace(**{"data.name": dataset, "data.root": data_root}))
    elif data_root and name not in REAL_DATA_PRESETS:
        p = p.replace(base=p.base.replace(**{"data.root": data_root}))
    if seeds is not None:
        p = p.replace(seeds=tuple(range(seeds)))
    if pretrained:
        p = p.replace(base=p.base.replace(**{"model.pretrained": pretrained}))
    if teacher_checkpoint:
        p = p.replace(base=p.base.replace(**{"distill.teacher_arch": teacher_arch or p.teacher.arch,
                                             "distill.teacher_checkpoint": teacher_checkpoint}))
    elif teacher_arch:
        p = p.replace(teacher=dataclasses.replace(p.teacher, arch=teacher_arch))
    if iterations is not None:
        p = p.replace(base=p.base.replace(**{"optim.iterations": iterations,
                                             "run.eval_every": max(1, iterations // 4)}))
    r = p.resources
    r = Resources(cpus=r.cpus if cpus is None else cpus, gpus=r.gpus if gpus is None else gpus,
                  num_workers=r.num_workers if workers is None else workers)
    shape = shape or ("train" if workers and workers > 1 else p.shape)
    return p.replace(resources=r, shape=shape)


def _smoke() -> Preset:
    base = TrainConfig().replace(**{
        "data.image_size": 64, "data.crop_size": 64, "data.num_classes": 8,
        "data.train_images": 16, "data.val_images": 4,
        "model.arch": "deeplabv3_tiny_r18",
        "optim.iterations": 10, "optim.batch_size": 2,
        "run.eval_every": 5, "run.log_every": 5, "run.device": "cpu", "run.threads": 1,
        "run.amp": False, "run.channels_last": False, "run.progress": False,
    })
    teacher = TeacherRecipe("deeplabv3_tiny_r18", {"optim.iterations": 20, "run.eval_every": 10})
    return Preset("smoke", base, teacher, (0,), "inline", Resources(cpus=1), ("deeplabv3_tiny_r18",), True)


def _demo() -> Preset:
    gpu = _gpu_available()
    # Flip-only augmentation (fixed scale, no crop): every input a student sees is known in advance,
    # so the study's trials share cached teacher logits (segdistill.teacher_cache) instead of running
    # the teacher each step, and grid ablations train as cohorts.
    base = TrainConfig().replace(**{
        "data.image_size": 128, "data.crop_size": 128, "data.num_classes": 24,
        "data.train_images": 384, "data.val_images": 96, "data.scale_min": 1.0, "data.scale_max": 1.0,
        "model.arch": "deeplabv3_tiny_r18",
        "optim.iterations": 200, "optim.batch_size": 8,
        "run.eval_every": 100, "run.log_every": 10, "run.threads": 0 if gpu else 1, "run.progress": False,
    })
    # Measured on 2 CPU cores: at 600 iterations this teacher reached 0.40 mIoU and 250-iteration CWD
    # students 0.22, so distillation has something to transfer. It trains once, with several threads.
    teacher = TeacherRecipe("deeplabv3_tiny_r101", {"optim.iterations": 300, "run.eval_every": 150,
                                                    "run.threads": 0 if gpu else min(4, os.cpu_count() or 1)})
    res = Resources(cpus=1, gpus=0.25 if gpu else 0.0)
    return Preset("demo", base, teacher, (0, 1), "inline", res,
                  ("deeplabv3_tiny_r18", "deeplabv3_tiny_mbv2", "pspnet_tiny_r18"), False)


def _paper(dataset: str, data_root: str) -> Preset:
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"the paper preset runs on {PAPER_DATASETS}, got {dataset!r}")
    if not data_root:
        raise ValueError("the paper preset needs --data-root (the directory holding the dataset)")
    base = TrainConfig().replace(**{
        "data.name": dataset, "data.root": data_root, "data.image_size": 512, "data.crop_size": 512,
        "data.num_workers": 8,
        "model.arch": "deeplabv3_r18",
        "optim.iterations": 40_000, "optim.batch_size": 8, "optim.lr": 0.01,
        "run.eval_every": 4_000, "run.log_every": 50, "run.device": "auto", "run.amp": True,
        "run.channels_last": True, "run.progress": False, "optim.sync_bn": True,
        **REFERENCE_PREPROCESSING, **REFERENCE_UPSAMPLING,
    })
    teacher = TeacherRecipe("deeplabv3_r101", {"optim.iterations": 80_000, "run.eval_every": 8_000})
    hwd = {"distill.mu": PAPER_MU[dataset], "distill.beta": 0.1, "distill.tau": 4.0}
    return Preset("paper", base, teacher, (0,), "train", Resources(cpus=8, gpus=1, num_workers=1),
                  ("deeplabv3_r18", "deeplabv3_mbv2", "pspnet_r18"), False,
                  method_params={"hwd": hwd, "cwd": {"distill.tau": 4.0}})


# The released command (zju-SWJ/HWD README.md:45, train_hwd.py) where it differs from the paper preset:
# HWD's parameters, and the run's
RELEASED_HWD: dict[str, Any] = {
    "distill.mu": 1.0,  # --shift 1.0
    "distill.pixel_correction": "none",  # --DivPixel None
    "distill.weighting": "smooth", "distill.beta": 0.1,  # --process E --parameter 0.1
    "distill.tau": 4.0,  # hard-coded in hwd_loss.py
}
RELEASED_OVERRIDES: dict[str, Any] = {
    "run.eval_every": 400,  # --val-per-iters 400 (train_hwd.py:70)
}


def _released(dataset: str, data_root: str) -> Preset:
    p = _paper(dataset, data_root)
    hwd = {**p.method_params["hwd"], **RELEASED_HWD}
    return p.replace(name="released", base=p.base.replace(**RELEASED_OVERRIDES),
                     method_params={**p.method_params, "hwd": hwd})


def pick(preset: Preset, values: tuple, smoke: tuple) -> tuple:
    """``values`` (the full grid), or ``smoke`` (a tiny subset) under the smoke preset."""
    return smoke if preset.subset else values


# ---------------------------------------------------------------- compare_methods
COMPARE_MIN_SEEDS = 3  # the demo comparison reports mean and spread over at least 3 seeds


def compare_methods_preset(preset: Preset, *, seeds_given: bool) -> Preset:
    """``compare_methods``' view of a preset: the demo preset runs at least 3 seeds unless ``--seeds``
    was given (the smoke and paper presets keep theirs)."""
    if preset.name == "demo" and not seeds_given and len(preset.seeds) < COMPARE_MIN_SEEDS:
        return preset.replace(seeds=tuple(range(COMPARE_MIN_SEEDS)))
    return preset


def method_overrides(method: str) -> dict[str, Any]:
    """Flat config overrides that give ``method`` its reference recipe's loss weight: ``distill.alpha``
    is 3 for CWD/HWD and 1 for KD, SKD, IFVD, CIRKD, MGD and DIST, whose terms carry their own
    reference weights (``distill.*_weight`` fields). Nothing for 'none' (the CE-only baseline)."""
    if method == "none":
        return {}
    return {"distill.alpha": reference_alpha(method)}
