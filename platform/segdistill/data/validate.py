"""Check a dataset before anything is trained on it: root and layout, decodable images, label ids.

``validate_data(cfg)`` opens the dataset as :func:`build_datasets` would (so a missing root or a
wrong layout raises the reader's own ``FileNotFoundError`` naming the expected layout) and then
loads ``per_split`` items spread evenly over each split, so a corrupt image or a label file with
ids outside the dataset's range is reported in seconds, not hours into a sweep. The readers apply
the same checks to every item they load at training time, so a bad file the sample missed still
fails its trial with a message naming the file.

Errors are :class:`DataValidationError` (a ``ValueError``) whose message starts with the
``data.*`` fields that selected the data, e.g. ``data.name='ade20k' data.root='/data/ade'``.
"""

from __future__ import annotations

from segdistill.config import DataConfig
from segdistill.data.registry import DatasetInfo, get_dataset_family


class DataValidationError(ValueError):
    """The dataset ``data.*`` points at is missing, in the wrong layout, or holds bad files."""


def _where(cfg: DataConfig) -> str:
    return f"data.name={cfg.name!r} data.root={cfg.root!r}"


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included), all if ``k >= n``."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def validate_data(cfg: DataConfig, *, per_split: int = 4) -> DatasetInfo:
    """Open ``cfg``'s dataset and decode ``per_split`` items of each split (0 = only open it).

    Raises :class:`DataValidationError` naming the fields, the offending value or file and what
    is allowed. Returns the dataset's :class:`DatasetInfo`.
    """
    family = get_dataset_family(cfg.name)  # unknown names are ConfigErrors at DataConfig construction
    info = family.info(cfg)
    try:
        sources = family.sources(cfg)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise DataValidationError(f"{_where(cfg)}: {exc}") from exc
    for split, source in zip(("train", "val"), sources, strict=True):
        n = len(source)
        if n == 0:
            raise DataValidationError(f"{_where(cfg)}: the {split} split holds no images")
        for i in spread(n, per_split):
            try:
                _, label = source.load(i)
            except (OSError, ValueError) as exc:
                raise DataValidationError(f"{_where(cfg)}: {split} item {i}: {exc}") from exc
            bad = ((label < 0) | (label >= info.num_classes)) & (label != info.ignore_index)
            if bool(bad.any()):
                ids = sorted({int(v) for v in label[bad].unique()[:10]})
                raise DataValidationError(
                    f"{_where(cfg)}: {split} item {i} has label ids {ids} outside the class range "
                    f"0..{info.num_classes - 1} (ignore = {info.ignore_index})")
    return info


__all__ = ["DataValidationError", "validate_data", "spread"]
