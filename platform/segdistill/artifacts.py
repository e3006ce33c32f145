"""A run's files: atomic writes, the model artefact a teacher is loaded from, and loading weights
into models (a frozen teacher, an ImageNet backbone) after checking they fit the config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import (
    BACKBONE_PREPROCESSING,
    MODEL_FORMAT,
    check_preprocessing,
    describe_format,
    load_model,
)
from .config import DataConfig, TrainConfig
from .models.weights import backbone_state


def atomic_save(obj: Any, path: Path) -> None:
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


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DDP and ``torch.compile`` wrappers."""
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


def save_model_artifact(model: nn.Module, cfg: TrainConfig, path: str | Path, metrics: dict[str, float] | None = None) -> Path:
    """Write weights + architecture facts: the file a teacher is loaded from (the model zoo unit)."""
    m = unwrap(model)
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
    atomic_save(payload, path)
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
