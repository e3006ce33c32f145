"""Cityscapes (fine annotations) in its released layout.

``<root>/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png`` and
``<root>/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png``. The 34 label ids map to the 19
evaluation train ids (the official ``labels.py``); every other id becomes ignore (255).
Validation images are all 2048x1024, so ``val_batchable`` is True.
"""

from __future__ import annotations

from pathlib import Path

from segdistill.config import DataConfig
from segdistill.data.files import FilePairSource, make_lut, pair_files, require_root
from segdistill.data.registry import IGNORE_INDEX, DatasetInfo, register_dataset

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)

# labelIds -> trainIds (cityscapesScripts labels.py); ids not listed are ignored.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# raw label ids the released files hold (255 = void is tolerated); any other id is an error
RAW_IDS: tuple[int, ...] = (*range(34), IGNORE_INDEX)
_SPLITS = {"train": "train", "val": "val"}
_LAYOUT = ("leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
           "gtFine/{train,val}/<city>/*_gtFine_labelIds.png")


def cityscapes_pairs(root: Path, split: str, limit: int = 0) -> list[tuple[Path, Path]]:
    img_dir = root / "leftImg8bit" / split
    images = list(img_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"expected Cityscapes images under {img_dir}/<city>/*_leftImg8bit.png; found none")

    def label_of(img: Path) -> Path:
        stem = img.name[: -len("_leftImg8bit.png")]
        return root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"

    return pair_files(images, label_of, dataset="Cityscapes", limit=limit)


@register_dataset("cityscapes")
class Cityscapes:
    """Cityscapes, 19 classes, ``gtFine`` labelIds mapped to trainIds."""

    @staticmethod
    def info(cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo("cityscapes", len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES, IGNORE_INDEX, val_batchable=True)

    @staticmethod
    def sources(cfg: DataConfig) -> tuple[FilePairSource, FilePairSource]:
        root = require_root(cfg, "Cityscapes", _LAYOUT)
        lut = make_lut(CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX)
        train = FilePairSource(cityscapes_pairs(root, _SPLITS["train"], cfg.max_train_images), lut, "Cityscapes",
                               raw_ids=RAW_IDS)
        val = FilePairSource(cityscapes_pairs(root, _SPLITS["val"], cfg.max_val_images), lut, "Cityscapes",
                             raw_ids=RAW_IDS)
        return train, val
