"""The ``DATASETS`` registry, :class:`DatasetInfo` and the dataset wrapper every reader returns.

A dataset *family* (``synthetic``, ``cityscapes``, ``ade20k``, ``cocostuff``) is a class registered
with :func:`register_dataset`; it provides two static methods:

- ``info(cfg) -> DatasetInfo``: name, class count and names, without touching the data;
- ``sources(cfg) -> (train_source, val_source)``: objects with ``__len__`` and
  ``load(i) -> (image uint8 (3, H, W), label int64 (H, W))`` giving *un-augmented* pairs whose
  labels are already in train-id space (``0..C-1`` or ``ignore_index``).

:func:`build_datasets` wraps the two sources in :class:`SegmentationDataset` with the training
augmentation (paper supplement Sec. III) for ``train`` and plain normalisation for ``val``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

import torch
from torch.utils.data import Dataset

from segdistill.config import DataConfig
from segdistill.data.transforms import EvalTransform, Preprocessing, TrainTransform

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer and the metrics need to know about a dataset.

    ``val_batchable`` is True when every validation image has the same size, so whole validation
    images can be stacked into batches; otherwise evaluate with batch size 1.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    val_batchable: bool = False

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"DatasetInfo({self.name!r}): {len(self.class_names)} class names for {self.num_classes} classes")
        if len(set(self.class_names)) != self.num_classes:
            raise ValueError(f"DatasetInfo({self.name!r}): class names are not unique")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"DatasetInfo({self.name!r}): ignore_index {self.ignore_index} collides with a class id")


class Source(Protocol):
    """Un-augmented ``(image uint8 (3, H, W), label int64 (H, W))`` pairs in train-id space."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class DatasetFamily(Protocol):
    @staticmethod
    def info(cfg: DataConfig) -> DatasetInfo: ...

    @staticmethod
    def sources(cfg: DataConfig) -> tuple[Source, Source]: ...


DATASETS: dict[str, type] = {}

_F = TypeVar("_F", bound=type)


def register_dataset(name: str) -> Callable[[_F], _F]:
    """Class decorator adding a dataset family to :data:`DATASETS`; a duplicate name raises."""

    def deco(cls: _F) -> _F:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered (by {DATASETS[name].__qualname__})")
        for method in ("info", "sources"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"dataset {name!r}: {cls.__qualname__} must define a static method {method}(cfg)")
        DATASETS[name] = cls
        return cls

    return deco


def get_dataset_family(name: str) -> DatasetFamily:
    """The registered family for ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return DATASETS[name]  # type: ignore[return-value]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}") from None


class SegmentationDataset(Dataset):
    """A :class:`Source` plus a transform; items are ``(image float32 (3, H, W), label int64 (H, W))``.

    ``generator`` (optional) drives the random augmentation; ``None`` uses torch's global RNG,
    which ``DataLoader`` seeds per worker (``base_seed + worker_id``), so a run is reproducible
    given ``torch.manual_seed``.
    """

    def __init__(self, source: Source, transform: TrainTransform | EvalTransform, info: DatasetInfo,
                 generator: torch.Generator | None = None) -> None:
        self.source = source
        self.transform = transform
        self.info = info
        self.generator = generator

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``source.load(index)`` with the labels checked: ids must be ``0..C-1`` or ``ignore_index``
        (anything else would crash the loss far from its cause, or be trained on silently)."""
        image, label = self.source.load(index)
        c, ignore = self.info.num_classes, self.info.ignore_index
        bad = ((label < 0) | (label >= c)) & (label != ignore)
        if bool(bad.any()):
            ids = torch.unique(label[bad])[:10].tolist()
            raise ValueError(f"{self.info.name}: item {index} has label ids {ids} outside the class range "
                             f"0..{c - 1} (ignore = {ignore}); the labels do not match data.name / data.num_classes")
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self.source):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.source)} items")
        image, label = self._load(index)
        return self.transform(image, label, generator=self.generator)

    def item_with_variant(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``self[index]`` plus which augmentation outcome it is (0 = as is, 1 = flipped), drawn
        from the same random numbers; only for a :class:`TrainTransform`."""
        if not isinstance(self.transform, TrainTransform):
            raise TypeError("item_with_variant needs a training transform")
        if not 0 <= index < len(self.source):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.source)} items")
        image, label = self._load(index)
        img, lbl, flipped = self.transform.apply(image, label, generator=self.generator)
        return img, lbl, int(flipped)


def preprocessing_of(cfg: DataConfig) -> Preprocessing:
    """The image preprocessing ``cfg``'s ``channel_order``, ``pixel_scale``, ``mean_*``, ``std_*`` describe."""
    return Preprocessing(cfg.channel_order, cfg.pixel_scale, (cfg.mean_r, cfg.mean_g, cfg.mean_b),
                         (cfg.std_r, cfg.std_g, cfg.std_b))


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``cfg.name`` (class count and names) without loading any data."""
    return get_dataset_family(cfg.name).info(cfg)


def build_datasets(cfg: DataConfig, *, generator: torch.Generator | None = None
                   ) -> tuple[SegmentationDataset, SegmentationDataset, DatasetInfo]:
    """``(train, val, info)`` for ``cfg``.

    train items: augmented crops ``(float32 (3, crop, crop), int64 (crop, crop))`` (random scale in
    ``[scale_min, scale_max]``, pad with 0 / ignore, random crop, random flip; supplement Sec. III);
    val items: whole images, normalised, no augmentation. Both are preprocessed as ``cfg``'s
    preprocessing fields say (:func:`preprocessing_of`).
    """
    family = get_dataset_family(cfg.name)
    info = family.info(cfg)
    train_src, val_src = family.sources(cfg)
    prep = preprocessing_of(cfg)
    train_tf = TrainTransform(crop_size=cfg.crop_size, scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                              flip=cfg.flip, ignore_index=info.ignore_index, preprocessing=prep)
    train = SegmentationDataset(train_src, train_tf, info, generator=generator)
    val = SegmentationDataset(val_src, EvalTransform(prep), info)
    return train, val, info
