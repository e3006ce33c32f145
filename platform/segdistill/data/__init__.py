"""Datasets: the embedded synthetic benchmark and readers for Cityscapes, ADE20K and COCO-Stuff.

``build_datasets(cfg) -> (train, val, info)``; ``dataset_info(cfg)``; ``DATASETS`` registry.
The dataset modules are imported explicitly below; each registers its family with
``@register_dataset``.
"""

from segdistill.data.registry import (
    DATASETS,
    IGNORE_INDEX,
    DatasetInfo,
    SegmentationDataset,
    build_datasets,
    dataset_info,
    get_dataset_family,
    preprocessing_of,
    register_dataset,
)
from segdistill.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    Preprocessing,
    TrainTransform,
    denormalize,
    normalize,
)
from segdistill.data import synthetic, cityscapes, ade20k, cocostuff  # noqa: E402  (explicit registration)
from segdistill.data.synthetic import class_table, synthetic_class_names

__all__ = [
    "DATASETS", "IGNORE_INDEX", "DatasetInfo", "SegmentationDataset", "build_datasets", "dataset_info",
    "get_dataset_family", "register_dataset", "IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform",
    "Preprocessing", "preprocessing_of", "TrainTransform", "normalize", "denormalize", "synthetic", "cityscapes", "ade20k", "cocostuff",
    "class_table", "synthetic_class_names", "label_ceiling",
]


def __getattr__(name: str):
    # ``label_ceiling`` lives in ``diagnostics`` (also a ``python -m`` entry point); imported lazily
    # so running that module does not find it half-imported.
    if name == "label_ceiling":
        from segdistill.data.diagnostics import label_ceiling

        return label_ceiling
    raise AttributeError(f"module 'segdistill.data' has no attribute {name!r}")
