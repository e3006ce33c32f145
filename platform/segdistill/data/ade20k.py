"""ADE20K (SceneParsing, ``ADEChallengeData2016``) in its released layout.

``<root>/ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``<root>/ADEChallengeData2016/annotations/{training,validation}/<stem>.png``. Raw label 0 is
"other" and becomes ignore (255); labels 1..150 become 0..149 ("reduce zero label").
``root`` may also point at ``ADEChallengeData2016`` itself. Images vary in size.
"""

from __future__ import annotations

from pathlib import Path

from segdistill.config import DataConfig
from segdistill.data.files import FilePairSource, make_lut, pair_files, require_root
from segdistill.data.registry import IGNORE_INDEX, DatasetInfo, register_dataset

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# raw label ids the released files hold (255 = void is tolerated); any other id is an error
RAW_IDS: tuple[int, ...] = (*range(len(ADE20K_CLASSES) + 1), IGNORE_INDEX)
_SPLITS = {"train": "training", "val": "validation"}
_LAYOUT = ("ADEChallengeData2016/images/{training,validation}/*.jpg and "
           "ADEChallengeData2016/annotations/{training,validation}/*.png")


def ade20k_base(root: Path) -> Path:
    """``<root>/ADEChallengeData2016``, or ``root`` itself when it already is that folder."""
    if (root / "ADEChallengeData2016").is_dir():
        return root / "ADEChallengeData2016"
    if root.name == "ADEChallengeData2016" or (root / "images").is_dir():
        return root
    raise FileNotFoundError(f"ADE20K: expected {root / 'ADEChallengeData2016'} holding images/{{training,validation}}/*.jpg "
                            f"and annotations/{{training,validation}}/*.png; it does not exist")


def ade20k_pairs(base: Path, split: str, limit: int = 0) -> list[tuple[Path, Path]]:
    img_dir = base / "images" / split
    images = list(img_dir.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"expected ADE20K images under {img_dir}/*.jpg; found none")
    ann_dir = base / "annotations" / split
    return pair_files(images, lambda p: ann_dir / f"{p.stem}.png", dataset="ADE20K", limit=limit)


@register_dataset("ade20k")
class ADE20K:
    """ADE20K-150: raw 0 (other) -> ignore, raw k -> k - 1."""

    @staticmethod
    def info(cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo("ade20k", len(ADE20K_CLASSES), ADE20K_CLASSES, IGNORE_INDEX, val_batchable=False)

    @staticmethod
    def sources(cfg: DataConfig) -> tuple[FilePairSource, FilePairSource]:
        base = ade20k_base(require_root(cfg, "ADE20K", _LAYOUT))
        lut = make_lut({k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)}, IGNORE_INDEX)
        train = FilePairSource(ade20k_pairs(base, _SPLITS["train"], cfg.max_train_images), lut, "ADE20K",
                               raw_ids=RAW_IDS)
        val = FilePairSource(ade20k_pairs(base, _SPLITS["val"], cfg.max_val_images), lut, "ADE20K",
                             raw_ids=RAW_IDS)
        return train, val
