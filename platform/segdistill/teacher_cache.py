"""Teacher logits computed once per (teacher, dataset, augmentation) and shared by a study's trials.

A frozen teacher in eval mode is a fixed function of its input. When the training augmentation has
finitely many outcomes per image (fixed scale, no random crop position: at most "as is" and
"flipped"), every input a student will ever see is known in advance, so the teacher's logits for all
of them can be computed once and looked up by ``(image index, variant)`` instead of running the
teacher each step. On a CPU the teacher's forward costs several times a small student's whole step,
so this is the largest saving for CPU studies. With random scale/crop (the paper's recipe) the
augmentation is unbounded and the live teacher is used.

The cache file lives in ``run.teacher_cache`` (a study points all its trials at one directory) and is
named by a hash of everything the logits depend on: the teacher file's bytes, the data config (minus
loader settings), the transform, the device type and autocast setting. The first trial builds it under
an exclusive file lock (others wait, then read it); it is written to a temporary name and renamed, so a
reader never sees a partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import DataConfig
from .data.registry import SegmentationDataset
from .data.transforms import TrainTransform

CACHE_FORMAT = "segdistill-teacher-logits-v1"


def augmentation_variants(train_ds: SegmentationDataset) -> int | None:
    """1 or 2 outcomes per image when the training augmentation is finite, else None.

    Checks the first image's size; :func:`build_logits` checks every image as it goes."""
    tf = train_ds.transform
    if not isinstance(tf, TrainTransform) or len(train_ds) == 0:
        return None
    _, label = train_ds.source.load(0)
    return tf.variant_count(*label.shape)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(data: DataConfig, teacher_file: str | Path, transform: TrainTransform, *, device_type: str,
              amp: bool, channels_last: bool) -> str:
    """Hex digest naming the cache file; changes whenever the cached logits could."""
    data_fields = {k: v for k, v in asdict(data).items() if k not in ("num_workers",)}
    facts = {
        "format": CACHE_FORMAT, "data": data_fields, "teacher_sha256": _file_digest(Path(teacher_file)),
        "transform": {"crop": transform.crop_size, "scale": [transform.scale_min, transform.scale_max],
                      "flip": transform.flip, "ignore": transform.ignore_index},
        "device": device_type, "amp": amp, "channels_last": channels_last, "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def build_logits(teacher: nn.Module, train_ds: SegmentationDataset, variants: int, *, device: torch.device,
                 amp: bool, memory_format: torch.memory_format, batch_size: int = 16,
                 progress: bool = False) -> Tensor:
    """``(N * variants, C, h, w)`` teacher logits, row ``index * variants + variant``, computed on
    ``device`` exactly as the trainer runs the live teacher (eval mode, same autocast and layout)."""
    tf = train_ds.transform
    assert isinstance(tf, TrainTransform)
    n = len(train_ds)
    keys = [(i, v) for i in range(n) for v in range(variants)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(keys), desc="teacher logits cache", unit="img", dynamic_ncols=True, leave=False)
    chunks: list[Tensor] = []
    for start in range(0, len(keys), batch_size):
        images = []
        for index, v in keys[start:start + batch_size]:
            image, label = train_ds.source.load(index)
            if tf.variant_count(*label.shape) != variants:
                raise ValueError(f"image {index} of size {tuple(label.shape)} does not have {variants} augmentation "
                                 f"outcomes; the teacher cache needs every image to fit the crop at the fixed scale")
            images.append(tf.variant(image, label, bool(v))[0])
        x = torch.stack(images).to(device, memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            chunks.append(teacher(x).logits.cpu())
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    return torch.cat(chunks)


class TeacherLogitCache:
    """Cached logits ``(N * variants, C, h, w)`` on the CPU; ``lookup(keys)`` moves a batch to the device."""

    def __init__(self, logits: Tensor, variants: int, path: Path | None = None) -> None:
        if logits.ndim != 4 or variants not in (1, 2) or logits.shape[0] % variants:
            raise ValueError(f"bad teacher cache: logits {tuple(logits.shape)}, variants {variants}")
        self.logits = logits
        self.variants = variants
        self.path = path

    def __len__(self) -> int:
        return self.logits.shape[0]

    def lookup(self, keys: Tensor, device: torch.device) -> Tensor:
        return self.logits.index_select(0, keys.cpu()).to(device, non_blocking=True)

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()


def open_teacher_cache(directory: str | Path, *, data: DataConfig, teacher_file: str | Path, teacher: nn.Module,
                       train_ds: SegmentationDataset, device: torch.device, amp: bool,
                       memory_format: torch.memory_format, progress: bool = False,
                       lock_timeout_s: float = 3600.0) -> TeacherLogitCache | None:
    """The study's cache for this (teacher, data, augmentation), built on first use; None when the
    augmentation is unbounded (then the caller keeps the live teacher)."""
    variants = augmentation_variants(train_ds)
    if variants is None:
        return None
    tf = train_ds.transform
    assert isinstance(tf, TrainTransform)
    key = cache_key(data, teacher_file, tf, device_type=device.type, amp=amp,
                    channels_last=memory_format == torch.channels_last)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"teacher-logits-{key}.pt"
    with open(root / f".{path.name}.lock", "a+") as lock:
        deadline = time.monotonic() + lock_timeout_s
        while True:  # bounded wait for another trial that is building the same cache
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {lock_timeout_s:.0f} s for the teacher cache lock {lock.name}") from None
                time.sleep(0.2)
        try:
            if path.is_file():
                payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            else:
                logits = build_logits(teacher, train_ds, variants, device=device, amp=amp,
                                      memory_format=memory_format, progress=progress)
                payload = {"logits": logits, "variants": torch.tensor(variants), "count": torch.tensor(len(train_ds))}
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                torch.save(payload, tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if int(payload["count"]) != len(train_ds):
        raise ValueError(f"teacher cache {path} holds {int(payload['count'])} images, the dataset has {len(train_ds)}")
    return TeacherLogitCache(payload["logits"], int(payload["variants"]), path)
